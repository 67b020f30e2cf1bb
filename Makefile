# Two commands from a fresh clone: `make run` (the main job, on this machine) and `make test`.
# Both create the project's virtual environment (.venv) and install the project into it if needed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml 2>/dev/null | cut -c1-12)

.PHONY: run test test-fast qemu-test qemu-guest bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -n auto

test-fast: $(STAMP)
	$(PY) -m pytest -n auto -m "not slow"

# The arm64 guest under QEMU (needs root for apt's arm64 packages and the network namespace).
qemu-guest: $(STAMP)
	$(PY) scripts/qemu/build_guest.py

qemu-test: $(STAMP)
	$(PY) -m pytest tests/qemu --qemu -v

bench: $(STAMP)
	$(PY) bench/handshake.py
	$(PY) bench/datapath.py
	$(PY) bench/cid.py

clean:
	rm -rf run build .pytest_cache .hypothesis
