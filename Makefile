# The two commands: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv constraints clean-venv sysdeps airflow-passwords

venv: $(STAMP)

# pip (not uv or poetry): torch==2.13.0 is the CPU wheel on this machine's disk and only pip sees it.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pinrec demo

test: $(STAMP) sysdeps
	$(PY) -m pytest tests

# Re-freeze the full transitive set after changing requirements*.txt.
constraints:
	$(PY) -m pip freeze --exclude-editable | grep -v '^pinrec' > constraints.txt

clean-venv:
	rm -rf $(VENV)

# System packages the tests use: Debian chromium for the Airflow UI browser test, Debian
# docker-compose 1.29 to validate docker-compose.yml without an engine (PostgreSQL 15 and Java 17
# are part of the machine image). Installs only what is missing; needs root or sudo.
sysdeps:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium \
	  || echo "sysdeps: could not install chromium; the browser test will be skipped"; }
	@command -v docker-compose >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq docker-compose \
	  || echo "sysdeps: could not install docker-compose; the Compose validation test will be skipped"; }

# Random passwords for the compose stack's Airflow users (the simple auth manager's file).
airflow-passwords:
	@mkdir -p deploy/secrets
	@test -f deploy/secrets/airflow-passwords.json || $(PY) -c "import json,secrets; print(json.dumps({u: secrets.token_urlsafe(18) for u in ('ops','analyst','admin')}))" > deploy/secrets/airflow-passwords.json
	@chmod 600 deploy/secrets/airflow-passwords.json && echo "deploy/secrets/airflow-passwords.json ready"
