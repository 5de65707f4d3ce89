# dreamloom: the obvious targets. `make test` and `make demo` set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# On GPU nodes: make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_INDEX ?=

.PHONY: setup browser test test-fast test-realsize lint chart-lint cluster-up format demo studio bench bench-methods bench-family toy-base toy-evaluator clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/pip install --quiet "torch==2.13.0" --index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

# Debian's Chromium for the studio's browser tests (Playwright drives it; its own browser download
# cannot reach the internet here). Installed once, as root, when missing.
CHROMIUM := /usr/bin/chromium
browser: $(CHROMIUM)

$(CHROMIUM):
	apt-get install -y -q chromium >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)

# Two workers, a test file each at a time (module fixtures such as one Triton per file start once).
# A crashed worker is not replaced: its replacement, given no file, left pytest-xdist waiting forever.
test: setup browser lint chart-lint
	$(BIN)/pytest -n 2 --dist loadfile --max-worker-restart=0 -m "not xl" --durations=15

test-fast: setup
	$(BIN)/pytest -m "not slow and not realsize"

# Every test on the real architectures (SD 1.5, 2.1 and SDXL shapes with random weights); make test
# runs the SD 1.5 and 2.1 ones, this adds SDXL and every method on them. One process loads many
# multi-GB models in turn: a fixed mmap threshold lets glibc hand each one's memory back when it is
# freed (its adaptive threshold kept 13.7 GB resident after the SD 1.5 methods, and SDXL then ran
# out of the machine's 24 GB).
test-realsize: setup
	MALLOC_MMAP_THRESHOLD_=1048576 $(BIN)/pytest -m realsize

# Renders the Helm chart with the real helm (installed under .tools/) and validates every object.
chart-lint: setup
	$(BIN)/python tools/chart_lint.py

# A development cluster (kind, KubeRay, KFP, the chart) on a machine with Docker; see README.
cluster-up: setup
	bash infra/cluster-up.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: setup
	$(BIN)/python -m dreamloom.demo

# The studio on the embedded defaults: a local Triton serving the toy base, the page on loopback.
studio: setup
	$(BIN)/dreamloom studio --serve-local

bench: setup
	$(BIN)/python bench/train.py

bench-methods: setup
	$(BIN)/python bench/methods.py --out bench/results/methods

# The methods over a family of new concepts: settings swept on 4, reported on 8 (see bench/family.py).
bench-family: setup
	$(BIN)/python bench/family.py --out bench/results/family

# The toy world's committed weights, reproduced from config and seed (2 cores: ~12 and ~55 minutes).
toy-evaluator: setup
	$(BIN)/python -m dreamloom.toy.evaluator

toy-base: setup
	$(BIN)/python -m dreamloom.toy.pretrain

clean:
	rm -rf .dreamloom demo-output .pytest_cache .ruff_cache
