"""edge's features, one module a file. Each has a DIRECTIVES table and optional compile
hooks (`compile_http`, `compile_location`) that `edge.cycle` calls in the order of
`edge.cycle.MODULES`."""


def remove_zone_files(prefix, keep):
    """Delete the shared-memory zone files named `prefix` + suffix whose suffix is not in
    `keep` (zones no config uses any more; a process that still maps one keeps its
    mapping). Files being written (".new") are left alone."""
    import os
    directory, base = os.path.split(prefix)
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return
    for name in names:
        if name.startswith(base) and not name.endswith(".new") and name[len(base):] not in keep:
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
