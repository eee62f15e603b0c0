# Lumiku Avatar Creator suite. `make dev` runs it, `make test` tests it; both install what they need.
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
PYTEST_WORKERS ?= 2

.PHONY: install dev test test-unit test-fast coverage fuzz lint typecheck bench bench-smoke infra clean validate-deploy system-test

$(UV):
	python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

install: $(UV)
	$(UV) sync --frozen --all-packages

infra: install
	@bash scripts/infra.sh
	@$(UV) run python -m lumiku_devtools.infra

dev: install infra
	$(UV) run lumiku dev

lint: install
	$(UV) run ruff check .
	$(UV) run ruff format --check .

typecheck: install
	$(UV) run mypy libs/*/src services/*/src bench

# Unreachable servers on purpose: a unit test that touches PostgreSQL, RabbitMQ or Redis fails here.
NO_SERVERS = POSTGRES_URL=postgresql+asyncpg://unit@127.0.0.1:9 AMQP_URL=amqp://unit@127.0.0.1:9/ REDIS_URL=redis://127.0.0.1:9/0

test: install lint typecheck test-unit infra
	$(UV) run pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not unit and not system"

# What CI cannot run here, checked offline: the rendered kustomizations against the Kubernetes schemas (and
# deploy/schemas for KEDA/Prometheus Operator objects), the manifests' rules, docker-compose.yml against the
# Compose schema, and no drift between the settings the code reads and both. Also unit tests (make test-unit).
validate-deploy: install
	$(UV) run python -m lumiku_devtools.deploy_check

test-unit: install
	$(NO_SERVERS) $(UV) run pytest -m unit -q

coverage: install infra
	$(UV) run pytest -n $(PYTEST_WORKERS) --dist loadfile -q -m "not system" --cov --cov-report=term:skip-covered --cov-report=json:.coverage.json

# Schema fuzzing at length (make test runs a small sample of the same): FUZZ_EXAMPLES per operation, FUZZ_SEED.
FUZZ_EXAMPLES ?= 200
fuzz: install infra
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(UV) run pytest -q -s services/gateway/tests/test_fuzz.py

test-fast: install
	$(UV) run pytest -x -q -m "not system"

# The whole suite as real processes under load and faults, then its invariants (report: .data/system-test/);
# SYSTEM_LOAD_SECONDS of load at least (the load lasts until the chaos schedule is over). Also: pytest -m system.
SYSTEM_LOAD_SECONDS ?= 60
system-test: install infra
	SYSTEM_LOAD_SECONDS=$(SYSTEM_LOAD_SECONDS) TEST_DB_TAG=$${TEST_DB_TAG:-system} $(UV) run python -m lumiku_devtools.system

bench: install infra
	$(UV) run python -m bench

# A few seconds of load per operation: fails when CPU per request / the framework floor of the same run grows
# more than 30 % over bench/gateway_expected.json (see bench/README.md).
bench-smoke: install infra
	$(UV) run python -m bench.gateway --smoke

clean:
	rm -rf .venv .pytest_cache .ruff_cache .mypy_cache .data
