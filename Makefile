# The two set-up commands of the README. Both create .venv on a fresh machine and install into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-all clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[train,onnx,serve,test]"
	touch $(STAMP)

# The product's life cycle on built-in data (scripts/demo.sh): train 4 tasks of handwritten digits,
# export with int8, predict, update the package with 2 new classes, predict again, info, rollback.
demo: $(STAMP)
	BIN=$(BIN) bash scripts/demo.sh

# The fast lane: every test not marked slow (under 5 minutes on 2 CPU cores). test-all: the whole suite,
# slow end-to-end runs included, as CI runs it (.ci/run).
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
