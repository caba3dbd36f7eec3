# One command sets up and runs each job; the set-up is idempotent (a stamp per requirements state).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?=
DATASET ?= chaost2

export PIP_CONSTRAINT := $(CURDIR)/requirements/constraints.txt
export PIP_BUILD_CONSTRAINT := $(CURDIR)/requirements/constraints.txt
export SAM2_BUILD_CUDA := 0
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib

.PHONY: setup test demo clean

setup: $(STAMP)

$(STAMP): requirements/requirements.txt requirements/constraints.txt requirements/lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements/requirements.txt -c requirements/lock.txt
	$(PY) -m pip check
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) .cache
