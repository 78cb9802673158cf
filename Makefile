# Two commands for a fresh machine (Python 3.11): `make demo` and `make test`.
# Each creates .venv and installs the project into it on first use.
PYTHON ?= python3
VENV   ?= .venv
# On machines without a GPU take the CPU build of torch (see constraints-cpu.txt);
# with a GPU run `make CONSTRAINTS= demo` to let pip pick the CUDA build.
CONSTRAINTS ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints-cpu.txt)

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet $(CONSTRAINTS) -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/fusioncube demo $(if $(OUT),--out $(OUT),)

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check flows tasks fusion_models benchmarks tests
	$(VENV)/bin/mypy

.PHONY: install demo test lint
