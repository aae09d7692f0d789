# OMA control plane. Two set-up commands: `make demo` and `make test`. Both are idempotent and fast when set up.
SHELL := /bin/bash
PY_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
BUF := .tools/node_modules/.bin/buf
STAMP := $(VENV)/.installed

.PHONY: demo test check lint fmt generate system-deps system-deps-demo tools clean bench fresh-root-check

# ---- set-up -------------------------------------------------------------------------------------------
# `make demo` installs only what the demo runs (the package without its dev extras, nbd-server, libnbd's Python
# binding); `make test` everything the suite drives too. Debian packages come from scripts/system-deps.sh.
DEV_STAMP := $(VENV)/.installed-dev

system-deps-demo:
	@bash scripts/system-deps.sh demo

# Debian packages the OMA and its tests drive for real: nbd-server, libnbd (nbdcopy/nbdinfo + Python binding),
# PostgreSQL, Node.js and npm (for buf and the TypeScript SDK), Chromium (the dashboard's browser tests).
system-deps:
	@bash scripts/system-deps.sh test

$(STAMP): pyproject.toml | system-deps-demo
	@test -x $(PY) || $(PY_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q -e .
	@touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(DEV_STAMP)

# From the committed lock, so a fresh clone stays clean (`npm install` would rewrite the lock).
$(BUF): .tools/package.json .tools/package-lock.json | system-deps
	cd .tools && npm ci --no-audit --no-fund --silent
	@touch $(BUF)

# The TypeScript SDK's packages (protoc-gen-es, connect, tsc) from its committed lock.
TS_SDK := generated/typescript
TS_MODULES := $(TS_SDK)/node_modules/.installed
$(TS_MODULES): $(TS_SDK)/package.json $(TS_SDK)/package-lock.json | system-deps
	cd $(TS_SDK) && npm ci --no-audit --no-fund --silent
	@touch $@

# Debian's libnbd Python binding (python3-libnbd) made importable in the venv: the reference agent copies with it.
LIBNBD := $(VENV)/.libnbd
$(LIBNBD): $(STAMP) | system-deps-demo
	@site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	  ln -sf /usr/lib/python3/dist-packages/nbd.py /usr/lib/python3/dist-packages/libnbdmod*.so "$$site/"
	$(PY) -c 'import nbd'
	@touch $@

tools: $(DEV_STAMP) $(BUF) system-deps $(LIBNBD) $(TS_MODULES)

# ---- code generation ------------------------------------------------------------------------------------
# Python needs grpcio-tools in the venv: installs the dev extras when it is missing, otherwise never reinstalls the
# package (a checkout elsewhere sharing this venv must not repoint the editable install at itself). TypeScript needs
# buf and the SDK's local protoc-gen-es.
generate: $(BUF) $(TS_MODULES)
	@$(PY) -c 'import grpc_tools' 2>/dev/null || $(MAKE) $(DEV_STAMP)
	scripts/generate.sh

# ---- checks -------------------------------------------------------------------------------------------
lint: $(DEV_STAMP) $(BUF)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy oma_server vma_client_stubs bench
	$(BUF) lint
	$(BUF) format -d --exit-code
	@bash scripts/buf-breaking.sh $(BUF)

fmt: $(DEV_STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: tools lint
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# ---- the main job ---------------------------------------------------------------------------------------
demo: $(STAMP) $(LIBNBD)
	$(PY) -m oma_server.demo

bench: tools
	$(PY) -m bench.nbd --json .bench-nbd.json

# As root: a fresh Debian bookworm root (debootstrap minbase) runs `make demo` and `make test` on a clean clone.
fresh-root-check:
	bash scripts/fresh-root-check.sh

clean:
	rm -rf .oma .pytest_cache .mypy_cache .ruff_cache
