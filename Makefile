# The two set-up commands of the README. Both create .venv on a fresh machine and install into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[train,onnx,serve,test]"
	touch $(STAMP)

# The product's life cycle on built-in data (scripts/demo.sh): train 4 tasks of handwritten digits,
# export with int8, predict, update the package with 2 new classes, predict again, info, rollback.
demo: $(STAMP)
	BIN=$(BIN) bash scripts/demo.sh

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
