# headflow: two commands for a newcomer — `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.headflow-installed
export HF_HUB_OFFLINE := 1

.PHONY: demo test install clean

install: $(STAMP)

# On a machine without a CUDA GPU, install the CPU build of torch first so pip does not pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q "torch==2.13.0"; fi
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# The report test opens the HTML report in headless Chromium (Debian package); skipped where unavailable.
test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: chromium not installed; the browser check in tests/test_report.py will be skipped"
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/headflow demo

clean:
	rm -rf $(VENV) build src/*.egg-info
