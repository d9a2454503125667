# Developer shortcuts. `make` builds the extensions in place for running from the tree.
PY ?= python3

.PHONY: build debug test annotate clean docs bench wheel tarball deb rpm packages

build:
	$(PY) setup.py -q build_ext --inplace

# Cython line tracing + bounds checks, and `cython -a` HTML next to the .pyx files.
debug:
	EDGE_DEBUG=1 $(PY) setup.py -q build_ext --inplace --force

annotate:
	cython -3 -a edge/_core/reactor.pyx -I edge/_core -o /tmp/edge-reactor-annotated.c
	@echo "open edge/_core/reactor.html"

test:
	./scripts/test

docs:
	$(PY) -m edge.config.docs > docs/directives.md
	$(PY) -m edge.config.docs nginx > docs/nginx.md

bench:
	./perf/bench

# Release artifacts into dist/ (docs/install.md). EDGE_VERSION=V stamps another version.
wheel:
	PYTHON=$(PY) packaging/build wheel

tarball:
	PYTHON=$(PY) packaging/build tarball

deb:
	PYTHON=$(PY) packaging/build deb

rpm:
	PYTHON=$(PY) packaging/build rpm

packages:
	PYTHON=$(PY) packaging/build all

clean:
	rm -rf build edge/_core/*.so edge/_core/reactor.c edge/*.so edge/_http_cffi.c edge/_core/*.html
