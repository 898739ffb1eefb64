# The few verbs people type. `make demo` and `make test` are the README's two commands.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SITE := .cache/sites/postgresql-15/html
# A second site, built by another generator (Sphinx), to check the converter generalises.
SPHINX_SITE := .cache/sites/python-3.11/html
# A third, from a generator the chrome removal was never tuned on (GNU Texinfo, the MIT/GNU
# Scheme reference): its prev/next/up panel is a plain div.header that no chrome rule names.
TEXINFO_SITE := .cache/sites/mit-scheme-ref/html
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export DEEPEVAL_TELEMETRY_OPT_OUT := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME := $(CURDIR)/.prefect

.PHONY: setup site chromium demo test test-all lint bench bench-scale eval-markdown gate diff chat ui lock clean

setup: $(VENV)/.installed site chromium

# The browser crawl.render: browser drives (Playwright points at it; nothing is downloaded).
chromium:
	test -x /usr/bin/chromium || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

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

# Docs sites from Debian packages, unpacked without installing them:
# $(call unpack_site,PACKAGE,FOLDER INSIDE THE PACKAGE,DESTINATION)
define unpack_site
	mkdir -p .cache/debs
	cd .cache/debs && (apt-get download $(1) 2>/dev/null || \
		{ apt-get update -qq && apt-get download $(1); })
	rm -rf .cache/unpack && dpkg-deb -x $$(ls -t .cache/debs/$(1)_*.deb | head -n 1) .cache/unpack
	mkdir -p $(dir $(3)) && rm -rf $(3)
	mv .cache/unpack/$(2) $(3) && rm -rf .cache/unpack
endef

# The built-in docs site: the PostgreSQL 15 manual (PostgreSQL License).
site: $(SITE)/index.html
$(SITE)/index.html:
	$(call unpack_site,postgresql-doc-15,usr/share/doc/postgresql-doc-15/html,$(SITE))
	test -f $@

$(SPHINX_SITE)/index.html:
	$(call unpack_site,python3.11-doc,usr/share/doc/python3.11/html,$(SPHINX_SITE))
	test -f $@

$(TEXINFO_SITE)/index.html:
	$(call unpack_site,mit-scheme-doc,usr/share/doc/mit-scheme-doc/html/mit-scheme-ref,$(TEXINFO_SITE))
	test -f $@

demo: setup
	$(BIN)/python -m tasks.services.demo

# The release gate on the current reports/eval.json, for CI: exits non-zero naming each broken
# floor (params.yaml gate:).
gate: $(VENV)/.installed
	$(BIN)/python -m flows.gate

# A terminal chat with the final model, its reply streamed, under the SFT system prompt;
# `make chat MODEL=base` (or sft, cpt/PHASE, a folder) for another.
MODEL ?= orpo
chat: $(VENV)/.installed
	$(BIN)/python -m tasks.services.chat --model $(MODEL)

# Two workers, one test file each at a time (a file's module fixtures, e.g. the pipeline's
# `dvc repro`, run once): 12 minutes on 2 cores instead of 17.
test: $(VENV)/.installed
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-all: setup
	$(BIN)/python -m pytest -m "not gpu"

lint: $(VENV)/.installed
	$(BIN)/ruff format --check flows tasks tests
	$(BIN)/ruff check flows tasks tests
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m tasks.bench.markdown --site $(SITE) --out reports/bench.json
	$(BIN)/python -m tasks.bench.markdown --site $(SITE) --cluster --out reports/bench_markdown_dask.json
	$(BIN)/python -m tasks.bench.datasets --site $(SITE) --pages 300 1000 --out reports/bench_datasets_dask.json
	$(BIN)/python -m tasks.bench.synth --markdown data/markdown --out reports/bench_synth.json
	$(BIN)/python -m tasks.bench.packing --site $(SITE) --out reports/bench_packing.json
	$(BIN)/python -m tasks.bench.cpt --out reports/bench_cpt.json
	$(BIN)/python -m tasks.bench.sft --out reports/bench_sft.json
	$(BIN)/python -m tasks.bench.render --site $(SITE) --out reports/bench_render.json

# How cost grows with the site: crawl, markdown and datasets through `dvc repro` on generated
# sites of SCALE_PAGES pages, and a no-op `dvc status` / `dvc repro` after them
# (reports/bench_scale.{json,md}). From SCALE_STAND_INS_FROM pages up only the crawl runs
# (markdown and datasets take hours on a small machine): the markdown stage's outputs are
# written from the pages it stored and only the no-op commands are timed after it; set it
# above the largest size to run all.
SCALE_PAGES ?= 1000 10000 100000
SCALE_STAND_INS_FROM ?= 100000
bench-scale: setup
	$(BIN)/python -m tasks.bench.scale --pages $(SCALE_PAGES) \
		--stand-ins-from $(SCALE_STAND_INS_FROM) --crawl-stand-in-sizes \
		--out reports/bench_scale.json

# Converter quality with no selector, on three sites from different generators; the reference
# main content and the site's navigation blocks (for the leak count) are picked by per-site
# selectors given here, never by the converter.
eval-markdown: setup $(SPHINX_SITE)/index.html $(TEXINFO_SITE)/index.html
	$(BIN)/python -m tasks.bench.markdown_quality --site $(SITE) --base-url https://www.postgresql.org/docs/15/ \
		--reference-selector body --reference-drop "div.navheader, div.navfooter" \
		--reference-chrome "div.navheader, div.navfooter" \
		--out reports/markdown_quality_postgresql.json
	$(BIN)/python -m tasks.bench.markdown_quality --site $(SPHINX_SITE) --base-url https://docs.python.org/3.11/ \
		--reference-selector "div[role=main]" \
		--reference-chrome "div.related, div.sphinxsidebar, div.footer" \
		--out reports/markdown_quality_python.json
	$(BIN)/python -m tasks.bench.markdown_quality --site $(TEXINFO_SITE) \
		--base-url https://www.gnu.org/software/mit-scheme/documentation/stable/mit-scheme-ref/ \
		--reference-selector body --reference-drop div.header --reference-chrome div.header \
		--out reports/markdown_quality_mit-scheme.json

# What changed between two releases: `make diff A=v1 B=v2`; B defaults to the workspace, A to
# the newest tag before B (an empty A keeps B second). Writes reports/diff/<A>..<B>.{md,html,json}.
diff: $(VENV)/.installed
	$(BIN)/python -m flows.diff "$(A)" $(B)

ui: $(VENV)/.installed
	$(BIN)/prefect server start --host 127.0.0.1

lock: $(VENV)/.installed
	{ head -n 3 requirements.lock; $(BIN)/pip freeze --exclude-editable | \
		sed 's/^torch==\(.*\)+cpu$$/torch==\1/' | sort -f; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) .cache .prefect
