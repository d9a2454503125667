"""Health endpoints for keepalived and load balancers, answered by the data plane.

`health live` is 200 whenever the worker's event loop runs, so a hung data plane fails
it. `health ready` is 503 while the node is draining (`edge drain`), while the last
reload failed to apply, while a worker is missing, or while the worker stops."""

from edge.config import LOCATION, Directive, types

DIRECTIVES = [
    Directive("health", (LOCATION,), (1, 1), parse=types.enum("live", "ready"),
              syntax="health live | ready;",
              doc="Answer liveness (`live`: 200 while the worker runs) or readiness (`ready`: "
                  "503 with a JSON reason while draining, after a failed reload, while "
                  "workers are missing or stopping) from the worker itself."),
]


def compile_location(conf, location, runtime):
    kind = conf.local("health")
    if kind is not None:
        location.set_health(kind == "ready")
