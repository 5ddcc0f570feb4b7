# Two commands on a fresh Debian 12 machine, as root:
#   make demo   - bring up each lab, drive it with real traffic, print what was verified, tear down
#   make test   - unit tests, then integration tests on real OVS + namespaces + the controller
# Both install what is missing (Debian packages, .venv) and are safe to run again.

SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
DEB_PACKAGES := openvswitch-switch openvswitch-common iproute2 iputils-ping ethtool socat iperf3 tcpdump procps python3-venv etcd-server etcd-client haproxy wrk tshark keepalived chromium chromium-driver
PYTEST_ARGS ?=

.PHONY: all deps venv demo test unit integration bench clean

all: test

# Debian packages, installed only when one is missing (apt-get update once first).
.deps.stamp: Makefile
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

deps: .deps.stamp

$(VENV)/.stamp: requirements.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

venv: $(VENV)/.stamp

demo: deps venv
	$(PY) -m ovs_scripts.demo

unit: venv
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

integration: deps venv
	@rc=0; for t in tests/integration/test_*.py; do $(PY) -m pytest $$t -q -p no:cacheprovider $(PYTEST_ARGS) || rc=1; done; exit $$rc

# Unit tests, then each integration module in its own pytest process (see tests/run_all.py).
test: deps venv
	$(PY) tests/run_all.py $(PYTEST_ARGS)

bench: deps venv
	$(PY) bench/flow_programming.py

# one benchmark by name: make bench-fenced_clone, bench-oam_ecmp, bench-cloud_router, ...
bench-%: deps venv
	$(PY) bench/$*.py

clean: venv
	-$(VENV)/bin/ovslab down --all
