# Quick start: `make demo` (synthetic dataset -> train -> evaluate under attack), `make test`.
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-lock

DEMO_DATA ?= data/synthetic
DEMO_EPOCHS ?= 6
DEMO_SIZE ?= --height 64 --width 32
DEMO_CKPT_DIR ?= models/checkpoints

.PHONY: setup demo test bench clean-demo

setup: $(STAMP)

$(STAMP): requirements.lock
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --disable-pip-version-check -q -r requirements.lock
	touch $(STAMP)

$(DEMO_DATA)/query: | $(STAMP)
	$(PYTHON) -m reid.data.synthetic $(DEMO_DATA) --seed 0

demo: $(STAMP) $(DEMO_DATA)/query
	$(PYTHON) train.py $(DEMO_DATA) --classif -n $(DEMO_EPOCHS) -b 32 -f demo.th $(DEMO_SIZE) \
		--workers 2 --device cpu --checkpoint-dir $(DEMO_CKPT_DIR)
	$(PYTHON) gen_adv.py $(DEMO_CKPT_DIR) $(DEMO_DATA) demo.th --classif -a all $(DEMO_SIZE) \
		--workers 2 --device cpu --out attacks/demo

test: $(STAMP)
	$(PYTHON) -m pytest -q tests

bench: $(STAMP)
	$(PYTHON) benchmarks/bench_metrics.py --out benchmarks/bench_metrics.json

clean-demo:
	rm -rf $(DEMO_DATA) attacks/demo $(DEMO_CKPT_DIR)/demo*
