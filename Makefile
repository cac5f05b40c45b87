# One-command set-up and runs. Each target creates the virtual environment with the pinned packages on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup setup-demo system-packages demo-packages test demo lint format clean

# Everything: the Python environment, ffmpeg, and the browser the viewer tests drive.
setup: $(STAMP) system-packages

# What the demo needs: the Python environment and ffmpeg (no browser).
setup-demo: $(STAMP) demo-packages

# The CUDA build of torch from PyPI (it also runs on CPU); constraints.txt pins every transitive package.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Debian packages: ffmpeg (ns-render writes videos with it); chromium and its driver (the viewer tests open
# ns-viewer's page in headless Chromium). Installed only when missing; `make demo` installs ffmpeg alone.
APT_INSTALL = if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null

system-packages:
	@missing=""; \
	command -v ffmpeg >/dev/null 2>&1 || missing="$$missing ffmpeg"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(APT_INSTALL); \
	fi

demo-packages:
	@missing=""; \
	command -v ffmpeg >/dev/null 2>&1 || missing="$$missing ffmpeg"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(APT_INSTALL); \
	fi

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=15 tests

demo: setup-demo
	$(BIN)/python -m relsnerf_ns.demo --output demo_output

lint: setup
	$(BIN)/ruff check relsnerf_ns tests
	$(BIN)/ruff format --check relsnerf_ns tests

format: setup
	$(BIN)/ruff format relsnerf_ns tests
	$(BIN)/ruff check --fix relsnerf_ns tests

clean:
	rm -rf $(VENV) demo_output outputs
