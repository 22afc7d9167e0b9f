# Thin targets; each installs what it needs on first use (tools/install.sh: CPU torch where there is no GPU).
# The course tooling is roadmap_tools/ (run from this folder); the lesson library the notebooks import is llm_roadmap/.
PY := .venv/bin/python
ARGS ?=
# jupyter refuses to start as root (a container, a cloud VM) unless told that this is intended
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

SITE_PY := .venv-site/bin/python

.PHONY: install run test lab check lint refresh roadmap site site-install site-test

install:
	@bash tools/install.sh

run: install  ## every notebook in the small config (or ARGS="phase01_foundations --size full"), summary at the end
	$(PY) -m roadmap_tools run $(ARGS)

test: install  ## lint, static checks, package tests, every notebook's small config at each seed, time budget
	bash tools/test.sh

lab: install  ## JupyterLab on 127.0.0.1
	.venv/bin/jupyter lab --ip=127.0.0.1 $(ROOT_FLAG)

check: install  ## static checks only
	$(PY) -m roadmap_tools check

lint: install
	.venv/bin/ruff check .

refresh: install  ## re-execute notebooks in place (small config) to refresh committed outputs: ARGS=path/to.ipynb
	$(PY) -m roadmap_tools run --inplace $(ARGS)

roadmap: install  ## regenerate the README's roadmap table
	$(PY) -m roadmap_tools roadmap

site-install:
	@bash tools/install_site.sh

site: site-install  ## the course website into build/site/ (offline, .venv-site), its links and lesson pages checked
	$(SITE_PY) -m roadmap_tools site $(ARGS)

site-test: site-install  ## build the site, open it in headless chromium (screenshots: build/site-artefacts/), test the build's failures
	@bash tools/install_chromium.sh
	SITE_TESTS=1 $(SITE_PY) -m pytest tests/test_site.py -p no:cacheprovider $(ARGS)
