PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Written once tools/install.sh has finished; it is older than any
# requirements change, so editing a pin re-runs the install.
INSTALLED := $(VENV)/.installed

.PHONY: install test demo

install: $(INSTALLED)

$(INSTALLED): tools/install.sh setup.py $(wildcard requirements/*.txt)
	PYTHON=$(PYTHON) VENV=$(VENV) tools/install.sh
	touch $@

test: $(INSTALLED)
	$(PY) -m pytest tests

demo: $(INSTALLED)
	$(PY) tools/analysis_tools/feature_shapes.py
