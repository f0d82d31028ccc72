# `make demo` and `make test` work on a fresh clone: each creates .venv when it
# is missing, installs the project with the extras it needs, then runs.
# Run as root (CI, containers) they also install the system packages that
# ffcv and the SLURM tests build against; otherwise see README.md.

PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
PIP      := $(BIN)/python -m pip
SYS_PKGS := libturbojpeg0-dev libopencv-dev pkg-config slurm-wlm munge
# quiet pip, but keep its errors
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: help demo test mi-bench sysdeps clean

help:
	@echo "make demo      pretrain on digits (75 s on a 2-core CPU), then linear-probe it against its random init"
	@echo "make test      run the test suite"
	@echo "make mi-bench  the MI staircase benchmark at default settings (writes runs/mi_bench)"
	@echo "make clean     remove .venv and build outputs"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install $(PIP_FLAGS) --upgrade pip setuptools wheel

# System packages, only when we are root and apt is there; a no-op once installed.
sysdeps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  missing=""; for p in $(SYS_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  fi; \
	else \
	  echo "not root: not installing system packages ($(SYS_PKGS)); see README.md"; \
	fi

# One stamp per set of extras; reinstalled when setup.py or the pinned versions change. constraints.txt
# pins the packages whose versions change the numbers (torch, timm, numpy, pillow, ...), so the demo
# prints what the README shows.
$(VENV)/.installed-%: setup.py constraints.txt | $(BIN)/python
	$(PIP) install $(PIP_FLAGS) -c constraints.txt -e ".[$*]"
	@touch $@

# Two workers (pytest-xdist), each taking whole test files: in one process the suite keeps one of a 2-core
# machine's cores busy (23.5 minutes of wall time for 21 of CPU); in two it took 14 to 16 (1118 passed). The SLURM
# tests start one local cluster at a time (a lock in tests/commands/conftest.py). `pytest tests/x.py` alone
# still runs in one process.
PYTEST_WORKERS ?= 2
test: sysdeps $(VENV)/.installed-dev,ffcv,detection
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile

# The demo: SimCLR + ML-CPC on scikit-learn's digits (infoview/configs/demo.yaml), then a
# linear probe on the frozen features of the pretrained encoder and of the same
# encoder at its initial weights: the README tour's first lines, into runs/demo
# (the probes in their default folders, runs/demo/linear and linear_random).
# Each run starts afresh in runs/demo.
DEMO := runs/demo
demo: $(VENV)/.installed-dev,detection
	rm -rf $(DEMO)
	$(BIN)/infoview pretrain --config demo out_dir=$(DEMO)
	$(BIN)/infoview linear backbone=$(DEMO) train.progress=false >/dev/null
	$(BIN)/infoview linear backbone=random:$(DEMO)/checkpoints/last.pt train.progress=false >/dev/null
	@$(BIN)/python scripts/demo_report.py $(DEMO)

mi-bench: $(VENV)/.installed-dev
	$(BIN)/infoview mi-bench out_dir=runs/mi_bench

clean:
	rm -rf $(VENV) build dist *.egg-info
