# Entry points (see README): `make toy`, `make demo` and `make test`. All set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup toy demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned, from local disk; then the project (it keeps that torch).
	$(BIN)/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

toy: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH bash pipelines/toy_run.sh

# The web demo on the model `make toy` trained; DEMO_ARGS="--port 8080" etc. pass through.
demo: $(STAMP)
	@test -d runs/toy/checkpoints || { echo "error: no trained toy model in runs/toy: run 'make toy' first" >&2; exit 2; }
	$(BIN)/dmn-demo --model runs/toy $(DEMO_ARGS)

test: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q

clean:
	rm -rf shards/toy runs/toy
