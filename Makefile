# Shortcuts for the project's commands; each recipe is what the README says to run.
.PHONY: setup test test-fast lint bench main

setup:
	bash scripts/setup.sh

test:
	bash scripts/test.sh

test-fast:
	.venv/bin/python -m pytest -q -m "not real_data" -x --ignore=tests/test_browser.py

lint:
	.venv/bin/ruff check . && .venv/bin/mypy && .venv/bin/lint-imports

# Every benchmark with its default arguments, on the state and data the main job uses
# (scripts/main.sh's IWAN_HOME and IWAN_DATA_DIR defaults): bench_live and bench_service need the
# collection it creates. Each prints one JSON object as its last line.
bench:
	export IWAN_HOME=$${IWAN_HOME:-$(CURDIR)/.iwan-home}; \
	if [ -z "$${IWAN_DATA_DIR:-}" ] && [ -d ../shared/data ]; then \
		export IWAN_DATA_DIR=$$(cd ../shared/data && pwd); \
	fi; \
	for script in benchmarks/bench_*.py; do \
		echo "== $$script"; \
		.venv/bin/python "$$script" || exit 1; \
	done

main:
	bash scripts/main.sh
