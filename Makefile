# Quick start: `make run` and `make test` each create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv browser run test bench lint clean

venv: $(STAMP)

# Reinstall only when the project metadata changes; the install is editable, so code
# changes need no reinstall.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: venv
	$(BIN)/osqueue sim --seed 1 --out .osqueue-run
	$(BIN)/osqueue sim --scenario default --seed 1 --out .osqueue-run/queue

# The status page test renders the broker's page in headless Chromium (Debian's package).
# Installs it once; does nothing when /usr/bin/chromium exists.
browser:
	test -x /usr/bin/chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

# pytest exits 5 when it collected no tests; make treats that as a failure, as it should.
test: venv browser
	$(BIN)/python -m pytest

bench: venv
	$(BIN)/python benchmarks/run_all.py

lint: venv
	$(BIN)/ruff check impl spec sim tests benchmarks

clean:
	rm -rf $(VENV) .osqueue-run .pytest_cache
