# Two entry points for a fresh Debian machine with Python 3.11:
#   make demo   -> venv + install + a local 4-worker / 2-server cluster training examples/train_mlp.py
#                  (then `. .venv/bin/activate` puts psframe-launch on PATH)
#   make test   -> venv + install everything (apt test components when root) + the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
APT_PACKAGES = openssh-server openmpi-bin slurm-wlm munge iproute2 procps packer shellcheck

.PHONY: demo test venv install install-test system-packages bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python

install: venv
	$(BIN)/pip install -q -e '.[s3,examples]'

# torch first, on its own: pip then takes the local CPU wheel; resolved inside '.[test]' it may
# pick the multi-GB CUDA build from the index instead.
install-test: venv
	$(BIN)/pip install -q 'torch==2.13.0'
	$(BIN)/pip install -q -e '.[test]'

# The real test components (sshd, Open MPI, Slurm, munge) come from Debian; installed only when
# missing and only when we are root (CI is).
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "not root: skipping apt packages:$$missing (their tests will skip unless CI=true)"; fi; \
	fi

demo: install
	$(BIN)/python examples/run_demo.py

test: system-packages install-test
	$(BIN)/python -m pytest -q tests

bench: install
	@mkdir -p demo-output
	$(BIN)/psframe-bench --json demo-output/bench.json --plot demo-output/bench.png

clean:
	rm -rf $(VENV) build *.egg-info demo-output
