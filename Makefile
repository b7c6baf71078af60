# The two set-up commands of the README:
#   make run    installs everything (CPU only) and rebuilds the embedded default (snakemake all)
#   make test   installs everything and runs the test suite
# torch is pinned so pip takes the local CPU wheel instead of a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
TORCH := torch==2.13.0

.PHONY: install run study evidence rehearsal lint test test-kernels test-all bench clean

install: $(VENV)/.installed

# The SLURM executor plugin is part of it: the profile tests drive it (with stub SLURM commands).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet $(TORCH)
	$(VENV)/bin/pip install --quiet -e ".[test,slurm]"
	touch $@

run: install
	$(VENV)/bin/snakemake --cores 2 all

# The evidence: the embedded task over replicated pipelines (worlds) at five designs of the pairs
# (configs/overlays/study.yaml; results in runs/study/, README "Evidence").
study: install
	$(VENV)/bin/python -m dppo.study --cores 2

# The study's tables become the paper's evidence (config key paper.evidence): commit evidence/
# with the code that produced them (their study.json records the commit and the machine).
evidence:
	mkdir -p evidence/study
	cp runs/study/tables/*.csv runs/study/tables/study.json evidence/study/

# The CPU rehearsal of configs/paper.yaml (configs/overlays/rehearsal.yaml) through a local
# single-node SLURM cluster, in runs/rehearsal: needs root (the cluster) and .venv-vllm
# (`bash .ci/vllm_env.sh`); about 11 minutes on 2 cores (docs/cluster.md).
rehearsal: install
	bash .ci/slurm/run_rehearsal.sh runs/rehearsal

# The code's habits, checked before the tests: ruff (ruff.toml) and snakefmt on the rule files.
lint: install
	$(VENV)/bin/ruff check src tests workflow benchmarks
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules

# -rs: tests that need an optional part (the vLLM environment, the SmolLM2 model) say why they skip.
# `long` tests run a shipped config's whole grid (minutes each): test-all and CI run them too.
test: lint
	$(VENV)/bin/python -m pytest -q -rs -m "not long"

# The unit tests again on other float kernels: each switch changes float32 results on
# this project's Intel machines, as another CPU's kernels would (README "What identical numbers means").
PERTURBED_KERNELS := MKL_CBWR=COMPATIBLE ATEN_CPU_CAPABILITY=avx2 OMP_NUM_THREADS=1
test-kernels: install
	$(PERTURBED_KERNELS) $(VENV)/bin/python -m pytest -q -rs -m "not long"

test-all: install
	$(VENV)/bin/python -m pytest -q -rs

bench: install
	$(VENV)/bin/pip install --quiet -e ".[bench]"
	$(VENV)/bin/python benchmarks/run.py
	$(VENV)/bin/python benchmarks/logprob_memory.py
	$(VENV)/bin/python benchmarks/e2e.py

clean:
	rm -rf results logs paper/figures paper/tables paper/main.pdf paper/build.log .snakemake
