# make demo: a sandbox host with a tracking server, a logged run and a deployed model.
# make test: the whole suite (unit tests and integration tests on real throwaway hosts), two test modules at a time.
# Both need root on a Debian/Ubuntu machine (systemd-nspawn test hosts).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEBS := systemd-container debootstrap iptables iproute2 python3-venv make

.PHONY: system-deps venv demo demo-down test unit bench

system-deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; }; \
	fi

# The venv is rebuilt only when requirements.txt changes (pip's wheel cache makes a rebuild quick).
venv:
	@want=$$(sha256sum requirements.txt | cut -c1-16); \
	if [ "$$(cat $(VENV)/.requirements 2>/dev/null)" != "$$want" ]; then \
	  rm -rf $(VENV) && $(PYTHON) -m venv $(VENV) && \
	  $(VENV)/bin/pip install -q --disable-pip-version-check --upgrade pip && \
	  $(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt && \
	  echo "$$want" > $(VENV)/.requirements; \
	fi

demo: system-deps venv
	$(PY) -m tests.testbed.demo

demo-down: venv
	$(PY) -m tests.testbed down demo1

test: system-deps venv
	$(PY) -m pytest tests -v -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder --durations=15; rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

unit: venv
	$(PY) -m pytest tests/unit -q

bench: system-deps venv
	$(PY) bench/setup_tracking.py
	$(PY) bench/deploy_model.py
	$(PY) bench/rolling.py
	$(PY) bench/wheelhouse.py
	$(PY) bench/replicas.py
	$(PY) bench/monitoring.py
