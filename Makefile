# Lumiku Avatar Creator suite. `make dev` runs it, `make test` tests it; both install what they need.
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
PYTEST_WORKERS ?= 2

.PHONY: install dev test test-fast lint typecheck bench infra clean

$(UV):
	python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

install: $(UV)
	$(UV) sync --frozen --all-packages

infra:
	@bash scripts/infra.sh

dev: install infra
	$(UV) run lumiku dev

lint: install
	$(UV) run ruff check .
	$(UV) run ruff format --check .

typecheck: install
	$(UV) run mypy libs/*/src services/*/src bench

test: install infra lint typecheck
	$(UV) run pytest -n $(PYTEST_WORKERS) --dist loadfile

test-fast: install
	$(UV) run pytest -x -q

bench: install infra
	$(UV) run python -m bench

clean:
	rm -rf .venv .pytest_cache .ruff_cache .mypy_cache .data
