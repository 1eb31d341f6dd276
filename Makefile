# Two commands do all the set-up on a fresh machine with Python 3.11 and make:
#   make run    create the environment, then run the embedded demo (MaskedOptim on digits, 10 clients)
#   make test   create the environment, then run the test suite (the fast default layer;
#               make test-runtime runs the checks that start Flower's runtime)
# The environment is .venv/, made with uv (installed into .tools/ first if it is missing).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
ARGS ?=

# Cached bytecode makes every simulated client start seconds faster.
unexport PYTHONDONTWRITEBYTECODE
export UV_PYTHON_DOWNLOADS := never

.PHONY: run test test-runtime lint format env clean deploy-local

run: $(STAMP)
	$(VENV)/bin/python simulation.py --num-clients 10 $(ARGS)

# The same app on Flower's deployment runtime: a SuperLink and 2 SuperNodes on localhost
# (docs/deployment.md); e.g. make deploy-local ARGS="--num-supernodes 4 --set num-rounds=5"
deploy-local: $(STAMP)
	$(VENV)/bin/python deploy_local.py $(ARGS)

# The default layer: unit tests and end-to-end checks through the in-process runtime, on two
# pytest workers. One process instead: make test ARGS="-n 0"; one test: make test ARGS="-k comparison".
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 -m "not runtime" --durations=10 $(ARGS)

# The runtime layer (tests/runtime/): Flower's SuperLink, Ray and SuperNodes. The deployment
# tests mostly wait on Flower's polling and heartbeats, so they run beside the simulation tests
# (one xdist group, so never two deployments at once). CI runs both layers.
test-runtime: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadgroup -m runtime --durations=10 $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

env: $(STAMP)

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install -q "uv==$(UV_VERSION)"

$(STAMP): pyproject.toml | $(UV)
	@test -x $(VENV)/bin/python || $(UV) venv --python "$(PYTHON)" $(VENV)
	$(UV) pip install --python $(VENV)/bin/python --compile-bytecode -r pyproject.toml --extra dev
	@rm -f $(VENV)/.installed-*
	@touch $@

clean:
	rm -rf $(VENV) .tools .flwr .deploy
