# The two commands of the README: `make demo` and `make test`. Both create and reuse .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.polymodal-installed

.PHONY: demo test lint typecheck docs registry bench clean-venv mermaid-check

# The text plugin is a package of its own (packages/polymodal-text); its tests run with polymodal's.
$(STAMP): pyproject.toml packages/polymodal-text/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	$(PY) -m pip install --quiet --disable-pip-version-check -e packages/polymodal-text
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py
	$(PY) examples/train_demo.py

test: lint typecheck
	$(PY) -m pytest

# Static checks; `make test` runs the linter, then the type checker, before the tests, so a
# finding of either fails it.
lint: $(STAMP)
	$(PY) -m ruff check core plugins examples/plugins/polymodal-signal packages/polymodal-text

# The type checker sees the packages by their import names through links in build/typecheck
# (see [tool.mypy]) and reports findings under the source paths.
typecheck: $(STAMP)
	@mkdir -p build/typecheck
	@ln -sfn ../../core build/typecheck/polymodal
	@ln -sfn ../../plugins build/typecheck/polymodal_plugins
	@ln -sfn ../../packages/polymodal-text/polymodal_text build/typecheck/polymodal_text
	@$(PY) -m mypy >build/typecheck/mypy.out; status=$$?; \
	  sed -e 's#^build/typecheck/polymodal/#core/#' -e 's#^build/typecheck/polymodal_plugins/#plugins/#' \
	    -e 's#^build/typecheck/polymodal_text/#packages/polymodal-text/polymodal_text/#' \
	    build/typecheck/mypy.out; \
	  exit $$status

docs: $(STAMP)
	$(VENV)/bin/polymodal docs -o docs/components --package polymodal
	$(PY) -c 'from pathlib import Path; from polymodal._docs import with_training_options as w; \
	  p = Path("docs/training.md"); p.write_text(w(p.read_text(encoding="utf-8")), encoding="utf-8")'

# The built-in entries of the catalog, from what the plugins register (comments and [[extra]] kept).
registry: $(STAMP)
	$(VENV)/bin/polymodal manifest polymodal -o registry.toml

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)

# The diagram test with a real Mermaid parser: installs the npm packages mermaid and jsdom into
# .mermaid (needs node and npm) and runs the diagram tests against them.
mermaid-check: $(STAMP)
	@test -d .mermaid/node_modules/mermaid || (mkdir -p .mermaid && cd .mermaid && npm install --no-audit --no-fund --silent mermaid@11 jsdom)
	POLYMODAL_MERMAID_MODULES=$(CURDIR)/.mermaid/node_modules $(PY) -m pytest tests/ecosystem/test_diagrams_and_reference.py
