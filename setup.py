"""Build edge's compiled hot path.

- `edge._core.reactor`: one Cython extension (reactor.pyx includes the rest, as uvloop's
  loop.pyx does) linked with our C HTTP parser, so parser calls are direct C calls.
- `edge._http_cffi`: the same parser bound with cffi for tests and the fuzzer.

EDGE_DEBUG=1 builds with Cython line tracing and bounds checks (`make debug`).
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("EDGE_DEBUG") == "1"

if not os.path.exists("/usr/include/openssl/ssl.h") and not os.environ.get("EDGE_OPENSSL_INCLUDE"):
    raise SystemExit("edge: building the compiled core needs OpenSSL's headers: install libssl-dev "
                     "(Debian/Ubuntu) or openssl-devel (RHEL), or run ./scripts/install")

if not os.path.exists("/usr/include/zlib.h") and not os.environ.get("EDGE_ZLIB_INCLUDE"):
    raise SystemExit("edge: building the compiled core needs zlib's headers: install zlib1g-dev "
                     "(Debian/Ubuntu) or zlib-devel (RHEL), or run ./scripts/install")

if not os.path.exists("/usr/include/brotli/encode.h") and not os.environ.get("EDGE_BROTLI_INCLUDE"):
    raise SystemExit("edge: building the compiled core needs libbrotli's headers: install libbrotli-dev "
                     "(Debian/Ubuntu) or brotli-devel (RHEL), or run ./scripts/install")

# -O2 as a floor; SSE4.2 is chosen at run time by the parser (__builtin_cpu_supports),
# so one binary runs on every x86-64 and still uses the vector scan where it can.
compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]
macros = [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "linetrace": DEBUG,
    "embedsignature": False,
}

extensions = [
    Extension(
        "edge._core.reactor",
        ["edge/_core/reactor.pyx", "edge/_core/http_parser.c"],
        include_dirs=["edge/_core"] + [os.environ[k] for k in ("EDGE_OPENSSL_INCLUDE", "EDGE_ZLIB_INCLUDE",
                                                                    "EDGE_BROTLI_INCLUDE")
                                       if os.environ.get(k)],
        # OpenSSL: the same libssl and libcrypto that Python's own ssl module links
        # zlib and libbrotlienc: response compression (gzip.pyx); headers from zlib1g-dev
        # and libbrotli-dev
        libraries=["ssl", "crypto", "z", "brotlienc"],
        extra_compile_args=compile_args + ["-Wno-unused-function"],
        define_macros=macros,
    ),
]

setup(
    ext_modules=cythonize(extensions, compiler_directives=directives,
                          annotate=DEBUG, force=DEBUG),
    cffi_modules=["edge/_http_build.py:ffibuilder"],
)
