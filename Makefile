# The two commands a newcomer needs:
#   make run   - set up .venv if missing and start the app on the embedded model
#   make test  - set up .venv (and Debian's chromium) if missing and run every test
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 8501
# Where the app listens: this machine only by default. To serve a room (and
# what that exposes), see docs/serving.md: make run ADDRESS=0.0.0.0
ADDRESS ?= 127.0.0.1
# Host names browsers may use besides localhost (DNS-rebinding guard); for a
# room, by default this machine's name and addresses. HOSTS="a.example b" overrides.
LOOPBACK := 127.0.0.1 localhost ::1
HOSTS ?= $(if $(filter $(LOOPBACK),$(ADDRESS)),,$(shell hostname 2>/dev/null) $(shell hostname -I 2>/dev/null))

.PHONY: run test test-fast setup chromium bench

setup: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	@touch $(STAMP)

# Browser tests drive Debian's chromium through Playwright (no browser download).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi; }

run: $(STAMP)
	$(PY) -m patching.warmup
	$(PY) -m streamlit run app.py --server.port $(PORT) --server.address $(ADDRESS) \
	  $(foreach h,$(LOOPBACK) $(HOSTS),--server.allowedHosts $(h))

# Two workers, each test file whole on one of them (its module fixtures built once).
test: $(STAMP) chromium
	$(PY) -m pytest -q -n 2 --dist loadfile

# Developers: the unit and engine tiers only (no embedded-model sweeps, no
# Streamlit, no browser); tiers are pytest markers, see pytest.ini.
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "unit or engine"

bench: $(STAMP)
	$(PY) benchmarks/head_sweep.py
