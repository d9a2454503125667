"""cffi builder for ``edge._http_cffi``, the binding of edge/_core/http_parser.c.

Out-of-line API mode: the C compiler checks these declarations against
http_parser.h, so a change to the header that the binding does not follow
fails the build instead of crashing at run time.

- setup.py: ``cffi_modules=["edge/_http_build.py:ffibuilder"]`` (paths are
  relative to the repository root, where setup.py runs).
- development, in place, from anywhere:  ``python edge/_http_build.py``
  builds in build/cffi/ and copies the extension next to edge/http.py.
"""
import os
import sys

if __name__ == "__main__":
    # Run as a script, Python puts edge/ first on sys.path, and our http.py
    # would then shadow the standard library's http package (which setuptools
    # imports while compiling).
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

from cffi import FFI  # noqa: E402

CDEF = """
#define EDGE_PARSE_ERROR ...
#define EDGE_PARSE_INCOMPLETE ...
#define EDGE_PARSE_TOO_MANY_HEADERS ...
#define EDGE_CHUNK_LINE_MAX ...
#define EDGE_TRAILER_MAX ...

struct edge_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

int edge_parse_request(const char *buf, size_t len,
                       const char **method, size_t *method_len,
                       const char **path, size_t *path_len, int *minor_version,
                       struct edge_header *headers, size_t *num_headers, size_t last_len);
int edge_parse_response(const char *buf, size_t len, int *minor_version, int *status,
                        const char **msg, size_t *msg_len,
                        struct edge_header *headers, size_t *num_headers, size_t last_len);
int edge_request_http_version(const char *buf, size_t len, int *major, int *minor);

struct edge_chunked_decoder { ...; };
ssize_t edge_decode_chunked(struct edge_chunked_decoder *d, char *buf, size_t *bufsz);

int64_t edge_parse_content_length(const char *s, size_t len);

int edge_parser_set_simd(int enable);
int edge_parser_simd_enabled(void);
"""


def make_builder(root=""):
    """A builder whose paths are relative to `root` ("" = the current directory)."""
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        "edge._http_cffi",
        '#include "http_parser.h"',
        sources=[os.path.join(root, "edge/_core/http_parser.c")],
        include_dirs=[os.path.join(root, "edge/_core")],
        extra_compile_args=["-O2"],
    )
    return ffi


ffibuilder = make_builder()


def build_inplace():
    """Build into build/cffi/ and copy the extension into edge/; return its path."""
    import shutil

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tmpdir = os.path.join(root, "build", "cffi")
    os.makedirs(tmpdir, exist_ok=True)
    # cffi compiles from inside tmpdir, so the sources need absolute paths here.
    built = make_builder(root).compile(tmpdir=tmpdir, verbose=False)
    target = os.path.join(root, "edge", os.path.basename(built))
    shutil.copy2(built, target)
    return target


if __name__ == "__main__":
    print(build_inplace())
