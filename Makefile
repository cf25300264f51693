# One entry point per job. `make train` and `make test` are all a newcomer needs: they create .venv, install the
# pinned requirements and this package (once; again only when requirements.txt or pyproject.toml change) and fetch
# MNIST themselves. `make train` installs what training needs; `make test` adds the test tools and references.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TOOLS_STAMP := $(VENV)/.installed-tools
BACKENDS_STAMP := $(VENV)/.installed-backends
ARGS   ?=
# Test processes: one per core, at most 4 (each holds TensorFlow, ~1 GB); TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: setup tools backends data train eval localize tensorboard test bench lint clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .   # `cam-mnist`, importable anywhere
	@touch $(STAMP)

tools: $(TOOLS_STAMP)          ## pytest, ruff, and the implementations the tests compare with (requirements-test.txt)

$(TOOLS_STAMP): $(STAMP) requirements-test.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-test.txt  # one resolve: the pins hold
	@touch $(TOOLS_STAMP)

backends: $(BACKENDS_STAMP)   ## JAX, PyTorch and pytorch-grad-cam, for the cross-backend tests and bench (not for training)

$(BACKENDS_STAMP): $(TOOLS_STAMP) requirements-backends.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-backends.txt
	@touch $(BACKENDS_STAMP)

data: setup          ## fetch MNIST (once), generate the held-out splits, draw out/data_samples.png
	$(PY) -m cam_mnist data $(ARGS)

train: setup         ## train the default model; ARGS="--preset seed" etc. (python -m cam_mnist train --help)
	$(PY) -m cam_mnist train $(ARGS)

eval: setup          ## test accuracy per checkpoint of the newest run (or ARGS="--run-dir out/<run>")
	$(PY) -m cam_mnist eval $(ARGS)

localize: setup      ## localization, segmentation and faithfulness of every CAM method on the newest run
	$(PY) -m cam_mnist localize $(ARGS)

tensorboard: setup   ## every run's curves and panels in TensorBoard (out/<run>/tb), at http://localhost:6006
	$(VENV)/bin/tensorboard --logdir out $(ARGS)

test: setup tools backends ## the whole suite, a few minutes on 2 CPU cores (pytest-xdist: a process per core)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal $(ARGS)

bench: setup tools backends ## speed measurements -> bench/results.json (quoted in the README)
	$(PY) -m cam_mnist bench $(ARGS)

lint: setup tools
	$(PY) -m ruff check cam_mnist tests scripts

clean:               ## remove generated outputs (keeps data/ and .venv)
	rm -rf out
