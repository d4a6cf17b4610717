# kidedge: `make demo` runs the main job on the built-in default, `make test` runs the tests.
# Both build the virtual environment first if it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench lint clean

venv: $(STAMP)

# torch and torchvision are pinned (the machine's pip takes them from local disk); the
# other extras are what the tests need. [tensorrt] is not installed: it needs a GPU host.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel
	$(BIN)/pip install "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -e ".[train,export,dicom,dev,fast-io,fast-cc,cluster]"
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q

demo: venv
	$(BIN)/kidedge demo

bench: venv
	$(BIN)/kidedge bench --quick

lint: venv
	$(BIN)/ruff check kidedge tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
