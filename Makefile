# Two commands from a fresh clone: `make run` (the main job, on this machine) and `make test`.
# Both create the project's virtual environment (.venv) and install the project into it if needed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml 2>/dev/null | cut -c1-12)

.PHONY: run test test-fast qemu-test qemu-guest bench clean venv deb pi-image pi-test

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

# The device package: build/deb/aitn-agent_<version>_arm64.deb (docs/pi.md).
deb: $(STAMP)
	$(PY) scripts/deb/build_deb.py

# The package on a Pi-like arm64 guest with systemd (tests/pi, docs/pi.md: root, mmdebstrap, about 10 minutes
# once the image is built). The test builds the next version and a broken one from the same tree.
pi-image: $(STAMP)
	$(PY) scripts/qemu/build_pi_image.py

pi-test: $(STAMP)
	rm -rf build/pi/debs
	$(PY) scripts/deb/build_deb.py --compression gzip --out build/pi/debs
	$(PY) -m pytest tests/pi --pi -v

bench: $(STAMP)
	$(PY) bench/handshake.py
	$(PY) bench/datapath.py
	$(PY) bench/cid.py

clean:
	rm -rf run build .pytest_cache .hypothesis
