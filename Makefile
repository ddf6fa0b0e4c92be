PYTHON ?= python3
# The stack of OpenMMLab libraries (requirements/<stack>/), each in an
# environment of its own, since both install the same modules:
# upstream (the default, .venv) or onedl (.venv-onedl), e.g.
# `make test-fast STACK=onedl`
STACK ?= upstream
ifeq ($(wildcard requirements/$(STACK)/mmcv.txt),)
$(error unknown STACK=$(STACK): the stacks are \
	$(patsubst requirements/%/mmcv.txt,%,$(wildcard requirements/*/mmcv.txt)))
endif
VENV := $(if $(filter upstream,$(STACK)),.venv,.venv-$(STACK))
PY := $(VENV)/bin/python
# Written once tools/install.sh has finished; it is older than any
# requirements change, so editing a pin re-runs the install.
INSTALLED := $(VENV)/.installed

DEMO_CONFIG := configs/demo/maskrcnn_cvt13_shapes.py
DEMO_DIR := work_dirs/demo_maskrcnn
DEMO_SEG_CONFIG := configs/demo/upernet_cvt13_shapes.py
DEMO_SEG_DIR := work_dirs/demo_upernet

.PHONY: install test test-fast lint format demo demo-seg

install: $(INSTALLED)

$(INSTALLED): tools/install.sh setup.py $(wildcard requirements/*.txt) \
		$(wildcard requirements/$(STACK)/*.txt)
	PYTHON=$(PYTHON) VENV=$(VENV) STACK=$(STACK) tools/install.sh
	touch $@

test: $(INSTALLED)
	$(PY) -m pytest tests

# The edit-test loop: everything but the tests marked slow (the demos'
# training, compiling, exporting, packaging), in a few minutes
test-fast: $(INSTALLED)
	$(PY) -m pytest tests -m "not slow"

# Style, as MMDetection checks it: flake8, isort and yapf with setup.cfg's
# settings (requirements/lint.txt); `make format` rewrites what they find
LINTED := mmcvt configs tools tests setup.py
lint: $(INSTALLED)
	$(PY) -m flake8 $(LINTED)
	$(PY) -m isort --check-only --diff $(LINTED)
	$(PY) -m yapf --diff --recursive $(LINTED)

format: $(INSTALLED)
	$(PY) -m isort $(LINTED)
	$(PY) -m yapf --in-place --recursive $(LINTED)

# A demo on built-in data, trained from scratch on the CPU: generate the
# shapes data if missing, train, test the last checkpoint, and draw the
# predictions on validation images into one PNG.
# $(1): the generator's --task, $(2): its output, $(3): config, $(4): work dir
define run_demo
	$(PY) tools/misc/make_shapes_dataset.py --task $(1) --out $(2)
	$(PY) tools/train.py $(3) --work-dir $(4)
	$(PY) tools/test.py $(3) $$(cat $(4)/last_checkpoint) --work-dir $(4)
	$(PY) tools/misc/show_predictions.py $(3) $$(cat $(4)/last_checkpoint) \
		--out $(4)/predictions.png
endef

# Mask R-CNN with CvT-13: COCO bbox and segm mAP
demo: $(INSTALLED)
	$(call run_demo,instance,data/shapes,$(DEMO_CONFIG),$(DEMO_DIR))

# UperNet with CvT-13: mIoU
demo-seg: $(INSTALLED)
	$(call run_demo,semseg,data/shapes_seg,$(DEMO_SEG_CONFIG),$(DEMO_SEG_DIR))
