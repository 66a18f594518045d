# Quick start: `make demo` (synthetic dataset -> train -> evaluate under attack), `make test`.
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-lock

DEMO_DATA ?= data/synthetic
DEMO_EPOCHS ?= 6
DEMO_SIZE ?= --height 64 --width 32
DEMO_CKPT_DIR ?= models/checkpoints

.PHONY: setup demo test bench goat-evidence transfer-evidence clean-demo

setup: $(STAMP)

$(STAMP): requirements.lock
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --disable-pip-version-check -q -r requirements.lock
	touch $(STAMP)

# Generated aside and renamed, so an interrupted generation is never mistaken for a dataset.
$(DEMO_DATA)/query: | $(STAMP)
	rm -rf $(DEMO_DATA).partial
	$(PYTHON) -m reid.data.synthetic $(DEMO_DATA).partial --seed 0
	mv $(DEMO_DATA).partial $(DEMO_DATA)

demo: $(STAMP) $(DEMO_DATA)/query
	$(PYTHON) train.py $(DEMO_DATA) --classif -n $(DEMO_EPOCHS) -b 32 -f demo.th $(DEMO_SIZE) \
		--workers 2 --device cpu --checkpoint-dir $(DEMO_CKPT_DIR)
	$(PYTHON) gen_adv.py $(DEMO_CKPT_DIR) $(DEMO_DATA) demo.th --classif -a all --eps 2 --step 0.5 --max_iter 10 \
		--workers 2 --device cpu --out attacks/demo --visualize 2
	$(PYTHON) gen_adv.py $(DEMO_CKPT_DIR) $(DEMO_DATA) demo.th --classif -a UAP noise --eps 8 --uap-epochs 3 \
		--workers 2 --device cpu --out attacks/demo-uap

test: $(STAMP)
	$(PYTHON) -m pytest -q --durations=25 tests

bench: $(STAMP) $(DEMO_DATA)/query
	$(PYTHON) benchmarks/bench_metrics.py --out benchmarks/bench_metrics.json
	$(PYTHON) benchmarks/bench_attacks.py --threads 1 --images 64 --iters 15 --out benchmarks/bench_attacks.json
	$(PYTHON) sort_dataset.py $(DEMO_DATA)
	$(PYTHON) benchmarks/bench_goat.py --dataset $(DEMO_DATA) --threads 1 --workers 1 --out benchmarks/bench_goat.json
	$(PYTHON) benchmarks/bench_distributed.py --out benchmarks/bench_distributed.json

# Clean vs GOAT models on the synthetic dataset, evaluated under SMA and FNA (about 45 min on 2 CPU cores).
GOAT_EPOCHS ?= 12
goat-evidence: $(STAMP) $(DEMO_DATA)/query
	$(PYTHON) benchmarks/goat_synthetic.py --dataset $(DEMO_DATA) --epochs $(GOAT_EPOCHS)

# Transfer matrix ResNet50 / DenseNet121 / ResNeXt50 under FNA and SMA at eps 2 and 5 (about 55 min on 2 CPU cores),
# then on the same models the transfer techniques, FGSM, the ensemble, the Mis-Ranking generator and the UAP at eps 8
# and 5, and the black-box attacks at eps 8 (benchmarks/transfer_techniques_synthetic.py; about 65 min more on 2 CPU cores).
transfer-evidence: $(STAMP)
	$(PYTHON) benchmarks/transfer_synthetic.py --work attacks/transfer-evidence --epochs 6 --workers 1
	$(PYTHON) benchmarks/transfer_techniques_synthetic.py --work attacks/transfer-evidence --epochs 6 --workers 1

clean-demo:
	rm -rf $(DEMO_DATA) attacks/demo attacks/demo-uap $(DEMO_CKPT_DIR)/demo*
