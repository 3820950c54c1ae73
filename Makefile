# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv and install the project into it; nothing is installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
EXTRAS := edge,edge-ml,cloud,chain,ml,sim,dev,influx
NPM_DIRS := $(wildcard contracts/package.json)

.PHONY: demo test lint bench clean venv npm

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

venv: $(STAMP)

# Node packages for the contracts (solc, a local chain node, the reference Merkle library).
npm:
	@for f in $(NPM_DIRS); do d=$$(dirname $$f); \
	  if [ ! -d $$d/node_modules ] || [ $$d/package-lock.json -nt $$d/node_modules ]; then \
	    (cd $$d && npm ci --no-audit --no-fund --loglevel=error) && touch $$d/node_modules; fi; done

demo: $(STAMP)
	$(BIN)/carbonlink demo

test: $(STAMP) npm
	$(BIN)/pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy carbonlink

clean:
	rm -rf $(VENV) var .pytest_cache
