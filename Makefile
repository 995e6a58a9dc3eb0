# The two commands: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv constraints clean-venv

venv: $(STAMP)

# pip (not uv or poetry): torch==2.13.0 is the CPU wheel on this machine's disk and only pip sees it.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pinrec demo

test: $(STAMP)
	$(PY) -m pytest tests

# Re-freeze the full transitive set after changing requirements*.txt.
constraints:
	$(PY) -m pip freeze --exclude-editable | grep -v '^pinrec' > constraints.txt

clean-venv:
	rm -rf $(VENV)
