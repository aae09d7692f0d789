# OMA control plane. Two set-up commands: `make demo` and `make test`. Both are idempotent and fast when set up.
SHELL := /bin/bash
PY_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
BUF := .tools/node_modules/.bin/buf
STAMP := $(VENV)/.installed

.PHONY: demo test check lint fmt generate system-deps tools clean bench

# ---- set-up -------------------------------------------------------------------------------------------
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PY_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# Debian packages the OMA drives for real: nbd-server, libnbd (nbdcopy/nbdinfo + Python binding), PostgreSQL.
system-deps:
	@bash scripts/system-deps.sh

$(BUF): .tools/package.json
	cd .tools && npm install --no-audit --no-fund --silent
	@touch $(BUF)

# Debian's libnbd Python binding (python3-libnbd) made importable in the venv: the reference agent copies with it.
LIBNBD := $(VENV)/.libnbd
$(LIBNBD): $(STAMP) | system-deps
	@site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	  ln -sf /usr/lib/python3/dist-packages/nbd.py /usr/lib/python3/dist-packages/libnbdmod*.so "$$site/"
	$(PY) -c 'import nbd'
	@touch $@

tools: $(STAMP) $(BUF) system-deps $(LIBNBD)

# ---- code generation ------------------------------------------------------------------------------------
# Only needs grpcio-tools in the venv; does not reinstall the package (a checkout elsewhere sharing this venv
# must not repoint the editable install at itself).
generate:
	@test -x $(PY) || $(MAKE) $(STAMP)
	scripts/generate.sh

# ---- checks -------------------------------------------------------------------------------------------
lint: $(STAMP) $(BUF)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy oma_server vma_client_stubs
	$(BUF) lint
	$(BUF) format -d --exit-code
	@bash scripts/buf-breaking.sh $(BUF)

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: tools lint
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# ---- the main job ---------------------------------------------------------------------------------------
demo: tools
	$(PY) -m oma_server.demo

bench: tools
	$(PY) -m bench.nbd --json .bench-nbd.json

clean:
	rm -rf .oma .pytest_cache .mypy_cache .ruff_cache
