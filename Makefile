# orderops: the two commands are `make run` and `make test`; everything else is a step of them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SERVICES := $(sort $(wildcard services/*/pyproject.toml)) tools/pyproject.toml
export ORDEROPS_PYTHON := $(abspath $(BIN)/python)
# SECURE=1: the broker with TLS, SASL/SCRAM and ACLs; every client as its own principal (docs/security.md).
export SECURE
RUN_DIR = $(or $(ORDEROPS_RUN_DIR),$(CURDIR)/.run)
KAFKA_SECRETS = $(or $(ORDEROPS_KAFKA_SECRETS_DIR),$(RUN_DIR)/secrets/kafka)
as_principal = $(if $(filter 1,$(SECURE)),KAFKA_SECURITY_PROTOCOL=SASL_SSL KAFKA_SASL_USERNAME=$(1) \
  KAFKA_SASL_PASSWORD_FILE=$(KAFKA_SECRETS)/$(1).password KAFKA_SSL_CA_FILE=$(KAFKA_SECRETS)/ca.pem)

.PHONY: bench test-faults browser prometheus help venv kafka-up kafka-down kafka-status registry-up registry-down topics run stop status test test-unit lint clean

help:
	@echo "make run           broker, topics, every processor, Prometheus, the simulator; prints where to look; Ctrl-C stops"
	@echo "make stop          stop the processors and the broker (state and data stay in .run/)"
	@echo "make status        what runs and whether it is ready"
	@echo "make test          environment, broker (if none), then the whole suite against it"
	@echo "make test-unit     the tests that need no broker"
	@echo "make test-faults   the fault tests at a bigger size (FAULT_ORDERS=200, HOSTILE_MESSAGES and HOSTILE_EVENTS=10000), a cluster's and a broker-restart test of librdkafka's producer among them; writes docs/reliability-results.md"
	@echo "KAFKA_BROKERS=3    with make run or kafka-up: a cluster of three brokers instead of one"
	@echo "make bench         benchmark every processor and the pipeline (own broker); writes docs/benchmarks.md"
	@echo "make kafka-up | kafka-down | kafka-status   the embedded Kafka 4.4 broker"
	@echo "make topics        create every catalog topic (idempotent)"
	@echo "make lint          ruff, and mypy (strict) on the kernel and the services' domain modules"
	@echo "make clean         stop the broker, delete .venv and .run (broker data, state, logs)"

# PYTHONWARNINGS: setuptools warns, once per package, that a folder named like the package may
# shadow it; each service's package is that folder, installed editable on purpose.
$(STAMP): requirements.lock requirements-dev.txt kernel/pyproject.toml $(SERVICES)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
	  { echo "orderops needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) --version 2>&1). Set PYTHON=python3.11 (or newer)." >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation:UserWarning" \
	  $(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -r requirements-dev.txt \
	  -e kernel $(foreach s,$(SERVICES),-e $(dir $(s)))
	@touch $@

venv: $(STAMP)

# KAFKA_BROKERS=3 make run: a cluster of three nodes (deploy/kafka/kafka.sh); every client starts from
# all three, and the catalog's topics and the processors' changelogs get three replicas, two in sync.
# The processors' state of the cluster's topics is kept apart from the single broker's (as the secure one's).
CLUSTER := $(if $(filter 3,$(KAFKA_BROKERS)),KAFKA_BOOTSTRAP=$$(deploy/kafka/kafka.sh bootstrap) \
	ORDEROPS_REPLICATION_FACTOR=3 ORDEROPS_MIN_INSYNC_REPLICAS=2 ORDEROPS_DATA_DIR=$(RUN_DIR)/state-cluster)

kafka-up: venv
	@if [ -n "$$KAFKA_BOOTSTRAP" ]; then echo "KAFKA_BOOTSTRAP=$$KAFKA_BOOTSTRAP is set: using that broker"; \
	 else deploy/kafka/kafka.sh up; fi

kafka-down:
	@deploy/kafka/kafka.sh down

# The Schema Registry of the Confluent framing (Apicurio, from Maven Central: deploy/registry/registry.sh).
REGISTRY_URL := http://127.0.0.1:$${ORDEROPS_REGISTRY_PORT:-6108}/apis/ccompat/v7
registry-up:
	@deploy/registry/registry.sh up

registry-down:
	@deploy/registry/registry.sh down

kafka-status:
	@deploy/kafka/kafka.sh status

topics: kafka-up
	@$(call as_principal,admin) $(CLUSTER) $(BIN)/orderops topics create --align
	@if [ "$(SECURE)" = 1 ]; then $(call as_principal,admin) $(BIN)/orderops security setup; fi

# The simulator compresses time (days per minute): processors follow event time, so orders age
# into escalations as the simulated days pass. ORDEROPS_CLOCK=wall for a live feed.
run: topics registry-up
	@$(MAKE) --no-print-directory prometheus || echo "(continuing without Prometheus: the processors still export /metrics)"
	@$(BIN)/orderops schemas register --url $(REGISTRY_URL) > $(RUN_DIR)/registry/registered.txt && \
	  echo "registry: orderops's schemas registered ($(RUN_DIR)/registry/registered.txt)"
	@$(call as_principal,policy-admin) $(CLUSTER) $(BIN)/orderops policies publish
	@$(BIN)/orderops users dev
	@$(BIN)/orderops ingest principals dev
	@$(call as_principal,admin) $(if $(filter 1,$(SECURE)),ORDEROPS_DATA_DIR=$(RUN_DIR)/state-secure) \
	  $(CLUSTER) ORDEROPS_CLOCK=$${ORDEROPS_CLOCK:-event} ORDEROPS_SCHEMA_REGISTRY_URL=$(REGISTRY_URL) \
	  $(BIN)/orderops processors start
	@echo
	@echo "orderops is up: the broker, every topic, the return policies, all five processors, Prometheus and the simulator."
	@echo "  CONSOLE      http://127.0.0.1:6105/   support console (API: /openapi.json; escalations appear as simulated days pass)"
	@echo "               sign in as ann (agent), lee (lead) or root (admin): tokens in .run/secrets/support-users.tokens"
	@echo "  broker       $${KAFKA_BOOTSTRAP:-$$(deploy/kafka/kafka.sh bootstrap)}   logs: .run/kafka$(if $(filter 1,$(SECURE)),-secure)/logs/$(if $(filter 1,$(SECURE)),   SECURE: SASL_SSL + ACLs; credentials in $(KAFKA_SECRETS))"
	@echo "  order-state  http://127.0.0.1:6101/orders/<order id>   /healthz   /metrics   log: .run/logs/order-state.log"
	@echo "  fulfillment  http://127.0.0.1:6102/orders/<order id>/fulfillment   log: .run/logs/fulfillment.log"
	@echo "  returns      http://127.0.0.1:6103/orders/<order id>/returns   policies: $(BIN)/orderops policies list"
	@echo "  notifier     http://127.0.0.1:6104/orders/<order id>/notifications   log: .run/logs/notifier.log"
	@echo "  timeline     http://127.0.0.1:6105/orders/<order id>   /timeline   log: .run/logs/timeline.log"
	@echo "  ingest       POST http://127.0.0.1:$${ORDEROPS_INGEST_PORT:-6107}/topics/<topic>/events   upstream events as JSON (docs/producing.md); tokens in .run/secrets/ingest-principals.tokens"
	@echo "  registry     $(REGISTRY_URL)   Schema Registry (Apicurio) for the Confluent framing   log: $(RUN_DIR)/registry/registry.log"
	@echo "  messages     emails as files in .run/sinks/mail/, webhooks in .run/sinks/webhooks/ (list: http://127.0.0.1:6180/)"
	@echo "  prometheus   http://127.0.0.1:$${ORDEROPS_PROMETHEUS_PORT:-9090}/   rules and alerts: deploy/prometheus/rules/ (try orderops:notification_accuracy:ratio_1h)"
	@echo "  books        http://127.0.0.1:$${ORDEROPS_BOOKS_PORT:-6106}/metrics   order-state, returns and the provider's books compared (alert OrderopsBooksDisagree)   log: .run/logs/books.log"
	@echo "  simulator    feeding orders (about five simulated days a minute, at most 40 events/s)   log: .run/logs/simulator.log"
	@echo "  topics       $(BIN)/orderops topics list"
	@echo "  status       make status        stop: make stop"
	@if [ -t 0 ] && [ -t 1 ] && [ -z "$$ORDEROPS_DETACH" ]; then $(BIN)/orderops processors watch; \
	 else echo "  (detached: stop with make stop)"; fi

stop:
	-@$(BIN)/orderops processors stop
	-@deploy/registry/registry.sh down
	@deploy/kafka/kafka.sh down

status:
	@deploy/kafka/kafka.sh status || true
	@deploy/registry/registry.sh status || true
	@$(BIN)/orderops processors status

# The broker fixture (orderops.ops.brokers) uses KAFKA_BOOTSTRAP, else testcontainers when Docker
# answers, else starts the embedded broker through deploy/kafka/kafka.sh and stops it after.
# The suite gets its own broker (port 19092, data in .run/test) unless KAFKA_BOOTSTRAP names one:
# test orders never show up in the system `make run` brings up, and both can run at once.
TEST_ENV := KAFKA_PORT=$${KAFKA_TEST_PORT:-19092} KAFKA_CONTROLLER_PORT=$${KAFKA_TEST_CONTROLLER_PORT:-19093} \
	ORDEROPS_RUN_DIR=$(CURDIR)/.run/test

# The cluster's fault test (three brokers of its own, about 4 minutes) and the broker-restart test of
# librdkafka's producer (`long`, about 2 minutes) run in make test-faults only.
test: venv lint browser prometheus
	$(TEST_ENV) $(BIN)/pytest -m "not cluster and not long" $(PYTEST_ARGS)

# The support console is tested in a real headless browser: Debian's chromium (Playwright drives it).
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium for the console test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null || \
	  { echo "could not install chromium: apt-get needs root. Ask an administrator for apt-get install chromium, or put a chromium on PATH, and retry" >&2; exit 1; }; }

# Prometheus (Debian's package: prometheus and promtool) for the rule tests, the real-scrape test and `make run`.
prometheus:
	@command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || { \
	  echo "installing Debian's prometheus (the server and promtool)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >/dev/null || \
	  { echo "could not install prometheus: apt-get needs root. Ask an administrator for apt-get install prometheus, or put prometheus and promtool on PATH, and retry" >&2; exit 1; }; }

# The fault tests run in `make test` at a size that fits the suite; here bigger.
# Each fault test records its figures (or, failing, what stopped it); they are written to docs/reliability-results.md.
FAULT_SIZES := FAULT_ORDERS=$${FAULT_ORDERS:-200} FAULT_RATE=$${FAULT_RATE:-60} FAULT_KILLS=$${FAULT_KILLS:-2} \
	FAULT_OUTAGE_SECONDS=$${FAULT_OUTAGE_SECONDS:-60} HOSTILE_MESSAGES=$${HOSTILE_MESSAGES:-10000} \
	HOSTILE_EVENTS=$${HOSTILE_EVENTS:-10000}
test-faults: venv
	@mkdir -p .run && rm -f .run/fault-results.jsonl
	$(TEST_ENV) $(FAULT_SIZES) FAULT_RESULTS=$(CURDIR)/.run/fault-results.jsonl $(BIN)/pytest -m faults --timeout 3600 \
	  $(PYTEST_ARGS); status=$$?; $(FAULT_SIZES) $(BIN)/python -m orderops_tools.faultreport .run/fault-results.jsonl; \
	  exit $$status

# Figures, not tests: a broker of its own, baselines measured in the same run (docs/benchmarks.md).
# BENCH_EVENTS, BENCH_RATES, BENCH_RATE_SECONDS, BENCH_WARMUP_SECONDS, BENCH_SOAK_SECONDS, BENCH_SOAK_RATE, BENCH_REPLAY_EVENTS size it (tools/orderops_tools/bench.py).
bench: venv
	$(BIN)/orderops bench

test-unit: venv
	$(TEST_ENV) $(BIN)/pytest -m "not broker" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check kernel services tools tests
	$(BIN)/mypy

clean:
	-@test -x $(BIN)/orderops && $(BIN)/orderops processors stop
	-@deploy/kafka/kafka.sh down
	rm -rf $(VENV) .run .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name '*.egg-info' -type d -prune -exec rm -rf {} +
