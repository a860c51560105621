# The README's commands. Each target does its own set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
REQS   := requirements.txt functions/requirements.txt trainer/requirements.txt \
          trainer/requirements-serving.txt pyproject.toml

.PHONY: demo test check lint typecheck bench reliability clean trainer-package

$(STAMP): $(REQS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# checkov pins many packages of its own: it lives in a venv of its own.
CHECKOV_VENV  := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-stamp
$(CHECKOV_STAMP): infra/terraform/requirements-checkov.txt
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check -r infra/terraform/requirements-checkov.txt
	@touch $(CHECKOV_STAMP)

demo: $(STAMP)
	$(VENV)/bin/retrain local demo --twice

test: $(STAMP) $(CHECKOV_STAMP)
	$(PY) -m pytest tests --ignore=tests/bench

lint: $(STAMP)
	$(VENV)/bin/ruff check functions trainer infra tests
	$(VENV)/bin/ruff format --check functions trainer infra tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy functions/retrain functions/main.py trainer infra/localcloud

check: lint typecheck test

bench: $(STAMP)
	$(PY) -m tests.bench

# Long forms of the reliability checks (hostile input, fuzzing, sustained faults, races, crash
# points, scale); writes docs/reliability.md. Bounded: under 30 minutes on a 2-core machine.
reliability: $(STAMP)
	timeout 1800 $(PY) -m tests.reliability

# The trainer as a Python package for Google's prebuilt training containers:
# dist/retrain_trainer-<version>.tar.gz (Terraform uploads it to the artifacts bucket).
trainer-package: $(STAMP)
	$(PY) -m trainer.package --out dist

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .localcloud .mypy_cache .ruff_cache dist
