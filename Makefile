# Thin targets; each installs what it needs on first use (tools/install.sh: CPU torch where there is no GPU).
PY := .venv/bin/python
ARGS ?=

.PHONY: install run test lab check lint refresh roadmap

install:
	@bash tools/install.sh

run: install  ## every notebook in the small config (or ARGS="phase01_foundations --size full"), summary at the end
	$(PY) -m llm_roadmap run $(ARGS)

test: install  ## lint, static checks, package tests, every notebook under papermill + nbval
	bash tools/test.sh

lab: install  ## JupyterLab on 127.0.0.1
	.venv/bin/jupyter lab --ip=127.0.0.1

check: install  ## static checks only
	$(PY) -m llm_roadmap check

lint: install
	.venv/bin/ruff check .

refresh: install  ## re-execute notebooks in place (small config) to refresh committed outputs: ARGS=path/to.ipynb
	$(PY) -m llm_roadmap run --inplace $(ARGS)

roadmap: install  ## regenerate the README's roadmap table
	$(PY) -m llm_roadmap roadmap
