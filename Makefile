# Quickstart: `make demo` and `make test` on a fresh machine.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all bench clean

$(STAMP): setup.py
	test -x $(VPY) || $(PY) -m venv $(VENV)
	# Pin the CPU torch build first so the package's 'torch>=' requirement is already met.
	$(VPY) -m pip install -q $(TORCH_PIN)
	$(VPY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/streamgen generate --timeline assets/timelines/demo.yaml --out outputs/demo.mp4

test: $(STAMP)
	$(VPY) -m pytest -q

test-all: $(STAMP)
	$(VPY) -m pytest -q --runslow

clean:
	rm -rf $(VENV) *.egg-info
