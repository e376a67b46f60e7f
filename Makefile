# The README's two commands: `make demo` and `make test`. Both set up what is missing first.
.PHONY: setup demo test bench

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/expert-router demo --out demo-out

test: setup
	.venv/bin/python -m pytest

bench: setup
	.venv/bin/python bench/classifier.py
	.venv/bin/python bench/gateway.py
	.venv/bin/python bench/loadgen.py
	.venv/bin/python bench/engine.py
	.venv/bin/python bench/quality.py
