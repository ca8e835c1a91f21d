# A3Mailer: `make run` starts everything on the embedded default; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev

.PHONY: run test lint format frontend schema bench clean help

help:
	@echo "make run      install into .venv, migrate, start every role (http://127.0.0.1:8000)"
	@echo "make test     install dev dependencies, run lint and the whole suite"
	@echo "make lint     ruff check + ruff format --check"
	@echo "make frontend rebuild static/ from frontend/ (needs npm)"
	@echo "make schema   write the OpenAPI document to docs/openapi.yaml"
	@echo "make bench    SMTP receiving and relaying vs a private Postfix, then scanning vs Rspamd and spamd"
	@echo "             (BENCH_ARGS='--messages 500 --only outbound' or '--only scan'; BENCH_SCAN_ARGS='--messages 500')"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# requirements.txt builds lxml and xmlsec from source (SAML sign-in) against the system's
# libxml2, so both use the same one. On Debian the build libraries are installed here when
# missing (as root), or named with the command that installs them.
SYSTEM_PACKAGES := pkg-config libxml2-dev libxslt1-dev libxmlsec1-dev

.PHONY: system-packages
system-packages:
	@command -v dpkg >/dev/null || exit 0; \
	missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "apt-get install$$missing"; DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; \
	else echo "Missing build libraries:$$missing. Install them with: sudo apt-get install$$missing"; exit 1; fi

$(STAMP_RUN): requirements.txt | $(PY) system-packages
	$(BIN)/pip install --quiet -r requirements.txt
	@touch $@

$(STAMP_DEV): requirements.txt requirements-dev.txt | $(PY) system-packages
	$(BIN)/pip install --quiet -r requirements-dev.txt
	@touch $@ $(STAMP_RUN)

run: $(STAMP_RUN)
	$(PY) manage.py serve

lint: $(STAMP_DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP_DEV) lint
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) manage.py check --deploy --fail-level ERROR
	$(PY) manage.py spectacular --validate --fail-on-warn --file $(VENV)/openapi.yaml
	@diff -q docs/openapi.yaml $(VENV)/openapi.yaml >/dev/null || \
		{ echo "docs/openapi.yaml is out of date: run 'make schema' and commit it"; diff -u docs/openapi.yaml $(VENV)/openapi.yaml | head -40; exit 1; }
	$(PY) -m pytest


format: $(STAMP_DEV)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

frontend:
	cd frontend && npm ci --no-audit --no-fund && npm run build

schema: $(STAMP_DEV)
	$(PY) manage.py spectacular --validate --fail-on-warn --file docs/openapi.yaml

# Inbound (SMTP reception and local delivery) and outbound (submission relayed to a local
# sink, with Postfix relaying the same load as the yardstick), then scanning (the built-in
# stages against private Rspamd and spamd instances, when installed); `--only
# inbound|outbound|scan` runs one part, BENCH_SCAN_ARGS go to bench_scan. Prints figures
# and writes var/bench/latest.json (SMTP) and var/bench/scan.json; never fails on speed,
# only when something available could not be measured (after running every part). May
# apt-get install postfix (the anchor).
bench: $(STAMP_DEV)
	@only=$$(printf '%s\n' "$(BENCH_ARGS)" | sed -n 's/.*--only[ =]*\([a-z]*\).*/\1/p'); status=0; \
	if [ "$$only" != scan ]; then $(PY) manage.py bench_smtp $(BENCH_ARGS) || status=$$?; fi; \
	if [ -z "$$only" ] || [ "$$only" = scan ]; then $(PY) manage.py bench_scan $(BENCH_SCAN_ARGS) || status=$$?; fi; \
	exit $$status

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
