# The two set-up commands of the README. Both create .venv on a fresh machine and install into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[train,onnx,test]"
	touch $(STAMP)

# The main job end to end on built-in data: 10 handwritten-digit classes, 5 tasks of 2.
demo: $(STAMP)
	$(BIN)/memo-edge train --dataset digits --scenario B0Inc2 --backbone resnet32 \
		--init-epochs 10 --epochs 8 --batch-size 32 --schedule cosine --memory 200 --device cpu \
		--out runs/demo --force

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
