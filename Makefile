# The few verbs people type. `make demo` and `make test` are the README's two commands.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SITE := .cache/sites/postgresql-15/html
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export DEEPEVAL_TELEMETRY_OPT_OUT := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME := $(CURDIR)/.prefect

.PHONY: setup site demo test test-all lint bench eval-markdown ui lock clean

setup: $(VENV)/.installed site

# Exact pins with --no-deps: no resolver search, the same packages on every machine.
$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "setuptools==84.2.1" "wheel==0.48.0"
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	# PyPI's torchaudio is a CUDA build whose libraries fail to load on CPU; without them it
	# imports as pure Python, which is all LlamaFactory needs.
	rm -f $$($(BIN)/python -c "import importlib.util as u, pathlib as p; print(p.Path(u.find_spec('torchaudio').origin).parent / 'lib')")/*.so
	touch $@

# The built-in docs site: Debian's postgresql-doc-15 HTML, unpacked without installing it.
site: $(SITE)/index.html
$(SITE)/index.html:
	mkdir -p .cache/debs
	cd .cache/debs && (apt-get download postgresql-doc-15 2>/dev/null || \
		{ apt-get update -qq && apt-get download postgresql-doc-15; })
	rm -rf .cache/unpack && dpkg-deb -x $$(ls -t .cache/debs/postgresql-doc-15_*.deb | head -n 1) .cache/unpack
	mkdir -p $(dir $(SITE)) && rm -rf $(SITE)
	mv .cache/unpack/usr/share/doc/postgresql-doc-15/html $(SITE) && rm -rf .cache/unpack
	test -f $@

demo: setup
	$(BIN)/python -m tasks.demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest

test-all: setup
	$(BIN)/python -m pytest -m "not gpu"

lint: $(VENV)/.installed
	$(BIN)/ruff format --check flows tasks tests
	$(BIN)/ruff check flows tasks tests
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m tasks.bench --site $(SITE) --out reports/bench.json

eval-markdown: setup
	$(BIN)/python -m tasks.quality --site $(SITE) --name postgresql

ui: $(VENV)/.installed
	$(BIN)/prefect server start --host 127.0.0.1

lock: $(VENV)/.installed
	{ head -n 3 requirements.lock; $(BIN)/pip freeze --exclude-editable | \
		sed 's/^torch==\(.*\)+cpu$$/torch==\1/' | sort -f; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) .cache .prefect
