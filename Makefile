# The README's two commands: `make demo` and `make test`. Both set up what is missing first.
.PHONY: setup demo test lint format bench

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/expert-router demo --out demo-out

test: setup lint
	.venv/bin/python -m pytest

# Quality gates, part of `make test`: lint and format (ruff), types (mypy; strict on classifier, gateway, loadgen).
lint: setup
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench
	.venv/bin/mypy

format: setup
	.venv/bin/ruff format src tests bench
	.venv/bin/ruff check --fix src tests bench

bench: setup
	.venv/bin/python bench/classifier.py
	.venv/bin/python bench/gateway.py
	.venv/bin/python bench/envoy.py
	.venv/bin/python bench/loadgen.py
	.venv/bin/python bench/engine.py
	.venv/bin/python bench/quality.py
