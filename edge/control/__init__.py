"""The control process: the control plane of one node, on asyncio (uvloop).

`process.run` is its entry point (forked by the master); `services` lists what runs in
it; `admin` is the admin HTTP listener, `status` and `metrics` the documents it serves.
"""
