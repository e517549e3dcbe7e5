# The README's commands. Everything a fresh machine needs is installed from here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
FLASK  := $(VENV)/bin/flask --app app

.PHONY: run test bench lint clean translations extract chaos

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
translations: $(VENV)/.runtime
	$(VENV)/bin/pybabel -q compile -d translations

run: $(VENV)/.runtime translations
	$(FLASK) first-run
	FLASK_MAIL_BACKEND=outbox FLASK_TICK_SECONDS=10 $(FLASK) run --reload --host 127.0.0.1 --port 5000

# The browser tests drive Debian's chromium (Playwright's own download cannot work here).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# The deliverability tests score every kind of message with Debian's SpamAssassin (local
# rules only: spamassassin -L -t, no network).
SPAMASSASSIN := /usr/bin/spamassassin
$(SPAMASSASSIN):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq spamassassin

# The reply tests read a throwaway Dovecot (tests/imap_server.py); Debian's policy-rc.d
# keeps the system service from starting.
DOVECOT := /usr/sbin/dovecot
$(DOVECOT):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd dovecot-lmtpd

# The PostgreSQL run (#19) starts its own throwaway cluster (tests/pg_server.py) with
# Debian's server binaries; policy-rc.d keeps the system cluster from starting.
POSTGRES := /usr/lib/postgresql/15/bin/postgres
$(POSTGRES):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql

## make test: install what the tests need, run the whole suite (slow group included) on
## SQLite, then the tests marked `postgres` again on a throwaway PostgreSQL cluster.
test: $(VENV)/.dev translations $(CHROMIUM) $(SPAMASSASSIN) $(DOVECOT) $(POSTGRES)
	$(PY) -m pytest
	SENDONCE_TEST_DB=postgresql $(PY) -m pytest -m postgres

## make bench: engine, SMTP, mailbox lanes, import, pages and the reply reader against bare ceilings, then claims and
## pages again on a throwaway PostgreSQL cluster (as make test starts one); appends BENCHMARKS.md.
bench: $(VENV)/.dev translations $(DOVECOT) $(POSTGRES)
	$(PY) -m bench.run

## make chaos: the full chaos run (10 min, 5,000 leads, kills, freezes, SMTP faults) and
## its reconciliation table; more: make chaos CHAOS_ARGS="--duration 900 --seed 7".
## On PostgreSQL (a throwaway cluster, installed as for make test): CHAOS_ARGS="--database postgresql".
chaos: $(VENV)/.dev translations $(if $(findstring postgresql,$(CHAOS_ARGS)),$(POSTGRES))
	$(PY) -m chaos.run $(CHAOS_ARGS)

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

## After changing UI strings: re-extract and merge into the catalogs, then translate.
extract: $(VENV)/.runtime
	$(VENV)/bin/pybabel -q extract -F babel.cfg -k _l -k lazy_gettext -o translations/messages.pot .
	$(VENV)/bin/pybabel -q update -i translations/messages.pot -d translations

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
