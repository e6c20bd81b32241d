# Two commands on a fresh machine: `make demo` (set up + train the toy stages + sample) and
# `make test` (set up + run the whole test suite). Both create .venv if it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
RUN_ROOT ?= runs/demo
DATA ?= data/toy
RAW ?= data/raw_toy
CURATED ?= data/curated

.PHONY: demo test install clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m vldm.jobs.toy_data --root $(DATA)
	$(BIN)/python -m data_curation.synthetic --root $(RAW) --count 64 --seed 7 --size 32 --bad-files
	$(BIN)/python -m data_curation input=$(RAW) output=$(CURATED) prefilter.min_short_side=32 clips.min_seconds=1 clips.max_seconds=1
	$(BIN)/python train.py -m experiment=toy paths.data_dir=$(DATA) stage=autoencoder,image,video,hq
	$(BIN)/python train.py experiment=toy paths.data_dir=$(DATA) paths.curated_dir=$(CURATED) stage=i2v data=curated_hq
	$(BIN)/python sample.py checkpoint=$(RUN_ROOT)/i2v image=$(DATA)/first_frames limit=4 output_dir=$(RUN_ROOT)/samples overwrite=true
	$(BIN)/python sample.py checkpoint=$(RUN_ROOT)/hq prompt="a red circle moving right" output_dir=$(RUN_ROOT)/samples overwrite=true
	$(BIN)/python -m vldm.jobs.toy_check --checkpoint $(RUN_ROOT)/i2v --data $(DATA) --out $(RUN_ROOT)/toy_check.json
	$(BIN)/python -m vldm.jobs.t2v_check --checkpoint $(RUN_ROOT)/hq --out $(RUN_ROOT)/t2v_check.json
	$(BIN)/python -m vldm.jobs.demo_summary $(RUN_ROOT) --curated $(CURATED)

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=10

clean-demo:
	rm -rf $(RUN_ROOT) $(CURATED)
