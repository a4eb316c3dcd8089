# packetcore: `make test` sets up everything from scratch (venv, build, install) and
# runs the suite; `make demo` runs a server and a fetch into output.json.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check --quiet
PYTEST_ARGS ?=

.PHONY: all venv install compile debug test test-py test-scale bench soak demo lint docs typecheck clean

all: install

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "setuptools>=77" "Cython>=3.0,<4" "numpy>=1.25" wheel
	touch $@

venv: $(VENV)/.deps

# Build the engine and install the package (with its test extras) into the venv.
# A compile error stops here: there is no silent fallback to pure Python.
install: venv
	$(PIP) install --no-build-isolation ".[test]"

# Build the extension in place, for working on the engine.
compile: venv
	$(PY) setup.py build_ext --inplace

# Line tracing, assertions and annotated HTML beside each .pyx.
debug: venv
	PACKETCORE_DEBUG=1 $(PY) setup.py build_ext --inplace --force

# The suite on the compiled engine, again on the pure-Python twin (switched at run time,
# as msgpack and aio-libs do), then lint and types, then the manual: what CI runs.
test: install
	$(PY) -m pytest tests -m "not slow and not scale" $(PYTEST_ARGS)
	PACKETCORE_NO_EXTENSIONS=1 $(PY) -m pytest tests -m "not slow and not c_extension and not engine_neutral and not scale" $(PYTEST_ARGS)
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory docs

# The whole suite on a package built without the extension, as a no-compiler machine has it.
test-py: venv
	PACKETCORE_NO_EXTENSIONS=1 $(PIP) install --no-build-isolation --force-reinstall --no-deps .
	PACKETCORE_NO_EXTENSIONS=1 $(PY) -m pytest tests -m "not slow and not c_extension and not scale" $(PYTEST_ARGS)
	$(PIP) install --no-build-isolation --force-reinstall --no-deps .

# HAProxy in front of two servers, configured as docs/scaling.md says, with 200 fetches
# through it (haproxy on the PATH: .ci/run takes it out of Debian's package; without it
# the tests skip). Under a minute; make test leaves them out.
test-scale: install
	$(PY) -m pytest tests -m scale $(PYTEST_ARGS)

bench: install
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-group-by=group \
		--benchmark-columns=min,median,mean,rounds --benchmark-sort=name $(PYTEST_ARGS)

soak: install
	$(PY) -m pytest tests -m slow $(PYTEST_ARGS)

# One line out, as the README promises: the install says nothing unless it fails (pip
# -qq keeps its errors), and the demo prints its summary or its one error line.
DEMO_ARGS ?=
demo:
	@$(MAKE) -s --no-print-directory install PIP="$(PIP) --quiet"
	@$(PY) -m packetcore demo $(DEMO_ARGS)

# The import direction (.importlinter) is read from the sources; the stub _engine.pyi is
# checked against the installed compiled engine (make install; make test runs it first).
lint: venv
	$(PIP) install "ruff==0.17.6" "mypy==2.4.1" "import-linter==2.17"
	$(PY) -m ruff check python tests benchmarks
	$(PY) -m ruff format --check python tests benchmarks
	$(PY) -m mypy
	PYTHONPATH=python $(VENV)/bin/lint-imports
	MYPYPATH=python $(PY) -m mypy.stubtest packetcore.engine._engine \
		--allowlist src/packetcore/engine/stubtest-allowlist.txt

# The manual: docs/ into site/ with MkDocs (pinned, as ruff and mypy are), strict:
# a broken link or anchor, or a page missing from mkdocs.yml's nav, fails the build.
docs: venv
	$(PIP) install "mkdocs==1.6.1"
	$(PY) -m mkdocs build --strict --quiet

clean:
	rm -rf build dist site *.egg-info python/*.egg-info src/packetcore/engine/*.c src/packetcore/engine/*.html
	find python -name '*.so' -delete
