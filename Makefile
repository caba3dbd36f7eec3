# `make demo`, `make train-demo` and `make test` each set up everything they need (.venv with the
# pinned stack and this repository installed editable) and are idempotent: the install runs again
# only when a requirements file or pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(CURDIR)/$(VENV)/bin/python
STAMP := $(VENV)/.installed

# Train-demo: train the compact network on the embedded phantoms (or DATA=<folder> DATASET=<preset>),
# then evaluate it and both baselines under the protocol: a check that the workflows run end to end.
DATA ?=
DATASET ?= $(if $(DATA),chaost2,phantom)
STEPS ?= 300
TEST_LABELS ?= [liver,spleen]
# AUTOENCODER=taef2 AUTOENCODER_PATH=<folder>: the tables' latents instead of the offline unshuffle
AUTOENCODER ?=
AUTOENCODER_PATH ?=
# PHANTOM_VOLUMES=20: how many phantoms the generated folder holds (default 10)
PHANTOM_VOLUMES ?=
# LABEL_SOURCE=supervoxel: train on self-supervised supervoxels only (gt | supervoxel | both; default both)
LABEL_SOURCE ?=
# every knob that changes what is trained names the run, so a changed knob starts its own run (the
# training workflow refuses to resume another training's checkpoint: bundle/scripts/engine/resume.py)
DEMO_RUN := demo_$(DATASET)$(if $(AUTOENCODER),_$(AUTOENCODER),)$(if $(PHANTOM_VOLUMES),_$(PHANTOM_VOLUMES)volumes,)$(if \
	$(LABEL_SOURCE),_$(LABEL_SOURCE),)_$(STEPS)steps
DEMO_ARGS := --dataset $(DATASET) --steps $(STEPS) --test_labels "$(TEST_LABELS)" \
	$(if $(DATA),--dataset_dir $(abspath $(DATA)),) --run_name $(DEMO_RUN) \
	$(if $(AUTOENCODER),--autoencoder $(AUTOENCODER),) \
	$(if $(AUTOENCODER_PATH),--autoencoder_path $(abspath $(AUTOENCODER_PATH)),) \
	$(if $(PHANTOM_VOLUMES),--phantom_volumes $(PHANTOM_VOLUMES),) \
	$(if $(LABEL_SOURCE),--label_source $(LABEL_SOURCE),)

# Every install and every package build sees the same constraints, so nothing pulls another torch;
# sam2 (a monailabel dependency) builds without CUDA.
export PIP_CONSTRAINT := $(CURDIR)/requirements/constraints.txt
export PIP_BUILD_CONSTRAINT := $(CURDIR)/requirements/constraints.txt
export SAM2_BUILD_CUDA := 0
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib

.PHONY: setup test demo train-demo accuracy shipped-model gpu clean zoo-package

setup: $(STAMP)

# The editable install (pyproject.toml) makes the bundle's `scripts` and the repository's `tools`
# importable from anywhere, from this checkout; no build isolation: setuptools comes with the stack.
$(STAMP): requirements/requirements.txt requirements/constraints.txt requirements/lock.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements/requirements.txt -c requirements/lock.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

# The real parts of the PACS tests (tests/test_pacs.py): Orthanc with its DICOMweb plugin and Chromium,
# Debian packages, installed once where apt-get can (root, Debian's archive reachable); where they
# cannot be, those tests skip and say why.
PACS_PACKAGES := orthanc orthanc-dicomweb chromium
.PHONY: setup-pacs
setup-pacs:
	@dpkg -s $(PACS_PACKAGES) >/dev/null 2>&1 || { \
		command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && export DEBIAN_FRONTEND=noninteractive && \
		{ apt-get install -y -qq --no-install-recommends $(PACS_PACKAGES) >/dev/null 2>&1 || \
		  { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends $(PACS_PACKAGES) >/dev/null; }; } \
	} || echo "setup-pacs: $(PACS_PACKAGES) could not be installed: the PACS and viewer tests will skip"

test: setup setup-pacs
	$(PY) -m pytest -q tests

# The demo: the shipped model (bundle/models/model.pt, TAEF2 in bundle/models/taef2) on the embedded
# CHAOS sample (bundle/sample/chaost2): four organs drawn on one slice of patient A, the rest of A and
# all of patient B segmented; Dice, times, NIfTI and a PNG in outputs/demo/ (bundle/scripts/demo.py).
demo: setup
	cd bundle && $(PY) -m scripts.demo --out $(CURDIR)/outputs/demo

TRAIN_DEMO_NOTE := train-demo is a workflow check, not accuracy: $(STEPS) training steps on $(if $(DATA),$(DATA) \
	(fold 0 only),synthetic phantoms (not real anatomy)), then the protocol's evaluation of the network and \
	both baselines. Its Dice numbers show that training, evaluation and reporting run end to end; they are \
	not the method's accuracy. The shipped model on real scans: make demo; the accuracy tables: make accuracy.
train-demo: setup
	@echo "$(TRAIN_DEMO_NOTE)"
	cd bundle && $(PY) -m monai.bundle run training --config_file configs/train.yaml $(DEMO_ARGS)
	cd bundle && $(PY) -m monai.bundle run evaluating \
		--config_file "['configs/train.yaml','configs/evaluate.yaml']" $(DEMO_ARGS)
	for method in support_copy registration; do \
		(cd bundle && $(PY) -m monai.bundle run evaluating \
			--config_file "['configs/train.yaml','configs/evaluate.yaml']" $(DEMO_ARGS) --method $$method) || exit 1; \
	done
	$(PY) bundle/scripts/protocol/compare.py bundle/runs/$(DEMO_RUN)/eval
	@echo; echo "$(TRAIN_DEMO_NOTE)"; echo "reports: bundle/runs/$(DEMO_RUN)/eval"

# One accuracy table of the protocol as resumable jobs (tools/runner/README.md):
#   make accuracy TABLE=chaost2_s1 [ONLY=pattern] [MAX_JOBS=1] [STEPS=3000]
# (STEPS counts only when given on the command line: the demo's default is not the table's budget)
accuracy: setup
	@test -n "$(TABLE)" || { echo "set TABLE=chaost2_s1|chaost2_s2|cmr|cmr_abdominal_gt|chaost2_ablation|chaost2_s1_curve|chaost2_s1_draw"; exit 2; }
	$(PY) -m tools.runner run --table $(TABLE) $(if $(ONLY),--only '$(ONLY)',) \
		$(if $(MAX_JOBS),--max-jobs $(MAX_JOBS),) $(if $(filter command line,$(origin STEPS)),--steps $(STEPS),)

# The checkpoint the bundle ships (bundle/models/README.md): the compact U-Net trained on CHAOST2's
# supervoxels (no organ label), every patient but the two embedded sample patients (the demo scores
# those), 8,000 steps at a constant learning rate, in one resumable run, then exported (fp16) to
# bundle/models/model.pt. The recipe of the fold models of the in-volume table (chaost2_s1_draw)
# and the learning curve (chaost2_s1_curve), with every patient but the sample.
#   make shipped-model [SHARED=../shared] [CACHE_DIR=<latent cache>]
SHARED ?= $(abspath $(CURDIR)/../shared)
SAMPLE_PATIENTS := [15, 39]
SHIPPED_RUN := chaost2_supervoxel_all-patients-but-sample
shipped-model: setup
	cd bundle && $(PY) -m monai.bundle run training --config_file configs/train.yaml \
		--dataset chaost2 --dataset_dir $(SHARED)/data/CHAOST2 --exclude_patients "$(SAMPLE_PATIENTS)" \
		--autoencoder taef2 --autoencoder_path $(SHARED)/weights/taef2 \
		--setting 1 --test_labels "[]" --fold null --label_source supervoxel --lr_schedule constant \
		--steps 8000 --val_interval 20 --run_name $(SHIPPED_RUN) \
		$(if $(CACHE_DIR),--cache_dir $(CACHE_DIR),)
	cd bundle && $(PY) -m scripts.network.export runs/$(SHIPPED_RUN)/model.pt models/model.pt \
		--autoencoder_path models/taef2

# The prepared GPU command (bench/gpu_bench.py): the machine's own python3 and torch, the wheels and
# data of .gpu_pack/ (made here by `bash bench/gpu_pack.sh`); no venv, no CPU pins. OUT: results.
OUT ?= bench/results/gpu
gpu:
	$(PYTHON) bench/gpu_bench.py --out $(OUT) --pack $(CURDIR)/.gpu_pack

# The model zoo's archive of this version: dist/sd_fsmis_fewshot_v<version>.zip (tools/zoo)
zoo-package: setup
	$(PY) -m tools.zoo.package --out $(CURDIR)/dist

clean:
	rm -rf $(VENV) .cache .data bundle/runs bundle/.cache
