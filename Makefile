PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Written once tools/install.sh has finished; it is older than any
# requirements change, so editing a pin re-runs the install.
INSTALLED := $(VENV)/.installed

DEMO_CONFIG := configs/demo/maskrcnn_cvt13_shapes.py
DEMO_DIR := work_dirs/demo_maskrcnn

.PHONY: install test demo

install: $(INSTALLED)

$(INSTALLED): tools/install.sh setup.py $(wildcard requirements/*.txt)
	PYTHON=$(PYTHON) VENV=$(VENV) tools/install.sh
	touch $@

test: $(INSTALLED)
	$(PY) -m pytest tests

# Mask R-CNN with CvT-13 on the built-in shapes data, from scratch on the
# CPU: generate the data if missing, train, test (COCO bbox and segm mAP),
# and draw the predictions on validation images into one PNG.
demo: $(INSTALLED)
	$(PY) tools/misc/make_shapes_dataset.py --task instance --out data/shapes
	$(PY) tools/train.py $(DEMO_CONFIG) --work-dir $(DEMO_DIR)
	$(PY) tools/test.py $(DEMO_CONFIG) $$(cat $(DEMO_DIR)/last_checkpoint) \
		--work-dir $(DEMO_DIR)
	$(PY) tools/misc/show_predictions.py $(DEMO_CONFIG) \
		$$(cat $(DEMO_DIR)/last_checkpoint) --out $(DEMO_DIR)/predictions.png
