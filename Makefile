# The two set-up commands: `make run` (start Sightline) and `make test` (run the tests).
# Each installs what it needs: Debian's ffmpeg (and chromium for the browser tests) and a .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
APT_RUN := ffmpeg
APT_TEST := ffmpeg chromium fonts-dejavu-core espeak-ng

.PHONY: run test test-fast system-run system-test clean

run: system-run $(VENV)/.run-installed
	$(PY) -m app serve

test: system-test $(VENV)/.test-installed
	$(PY) -m pytest

test-fast: $(VENV)/.test-installed
	$(PY) -m pytest -m "not slow and not browser"

# System packages: installed with apt where missing (needs root or sudo).
system-run:
	@$(MAKE) --no-print-directory _apt PKGS="$(APT_RUN)"
system-test:
	@$(MAKE) --no-print-directory _apt PKGS="$(APT_TEST)"
_apt:
	@missing=""; for p in $(PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# scenedetect declares opencv-python; we use the headless build, so it goes in without its dependencies.
$(VENV)/.run-installed: requirements.txt pyproject.toml | $(VENV)/bin/python
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps scenedetect==0.7.2
	$(PIP) install --no-deps -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.run-installed requirements-dev.txt
	$(PIP) install -r requirements-dev.txt
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache
