# The README's commands. Everything a fresh machine needs is installed from here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
FLASK  := $(VENV)/bin/flask --app app

.PHONY: run test bench lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.runtime: requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

## make run: install, create the database (demo data + a login the first time), serve
## http://127.0.0.1:5000 with the scheduler on; mail goes to instance/outbox/*.eml.
run: $(VENV)/.runtime
	$(FLASK) first-run
	FLASK_MAIL_BACKEND=outbox FLASK_TICK_SECONDS=10 $(FLASK) run --reload --host 127.0.0.1 --port 5000

## make test: install what the tests need, run the whole suite (slow group included).
test: $(VENV)/.dev
	$(PY) -m pytest

bench: $(VENV)/.dev
	$(PY) bench/run.py

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
