"""edge's features, one module a file. Each has a DIRECTIVES table and optional compile
hooks (`compile_http`, `compile_location`) that `edge.cycle` calls in the order of
`edge.cycle.MODULES`."""
