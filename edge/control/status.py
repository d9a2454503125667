"""`/status`: what the node runs, as JSON, from the shared state block.

Every value is read from shared memory on each request; the control process keeps no
copy, so a respawned one answers exactly as the one before it. The exception is the
detail of `upstreams` (counts of consecutive checks, the last error, DNS errors), which
the upstream service (edge/control/upstreams.py) keeps; a peer's health verdict and a
name's addresses come from shared memory.
"""

import time

import edge


def document(ctx):
    shared = ctx.shared
    now_ms = int(time.monotonic() * 1000)   # the clock the workers stamp heartbeats with
    workers = []
    ready, reason = shared.ready()
    for index in range(shared.workers_expected):
        try:
            beat = shared.heartbeat(index)
        except IndexError:      # more workers than the block has slots for
            break
        workers.append({
            "index": index,
            "pid": shared.worker_pid(index) or None,
            "generation": shared.worker_generation(index),
            "heartbeat_age_ms": max(0, now_ms - beat) if beat else None,
        })
    started = shared.started_ms
    service = ctx.upstreams() if hasattr(ctx, "upstreams") else None
    upstreams = {}
    if service is not None:
        try:
            upstreams = service.status()
        except Exception as e:  # /status must answer even so
            upstreams = {"error": repr(e)}
    return {
        "version": edge.__version__,
        "generation": shared.generation,
        "master_pid": shared.master_pid,
        "control_pid": ctx.pid,
        "control_generation": ctx.generation,
        "draining": bool(shared.draining),
        "ready": bool(ready),
        "ready_reason": reason,
        "config_failed": bool(shared.config_failed),
        "workers_expected": shared.workers_expected,
        "workers_up": shared.workers_up,
        "workers": workers,
        "uptime_seconds": round(max(0.0, time.time() - started / 1000), 3) if started else None,
        "upstreams": upstreams,
    }
