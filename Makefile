# One-command entry points. Everything installs into .venv in the repo root.
PY := .venv/bin/python
STAMP := .venv/.setup-done

.PHONY: setup test test-fast test-slow demo clean

setup: $(STAMP)

# The project in editable mode with every extra (torch, data, test), pinned by constraints.txt,
# then the data packages whose own dependencies conflict, without them (requirements-data.txt),
# and the benchmark's Uni-Mol anchor, also without its dependencies (requirements-bench.txt).
$(STAMP): pyproject.toml setup.py requirements.txt requirements-data.txt requirements-bench.txt constraints.txt
	@python3 -c 'import sys; v = sys.version_info; sys.exit(0 if v >= (3, 11) else f"molbind-jax needs Python >= 3.11; python3 is {v.major}.{v.minor}")'
	python3 -m venv .venv
	.venv/bin/pip install -q -r requirements.txt -c constraints.txt
	.venv/bin/pip install -q --no-deps -r requirements-data.txt
	.venv/bin/pip install -q --no-deps -r requirements-bench.txt
	.venv/bin/python -c "import jax, flax, jraph, tensorflow_datasets, torch, rdkit, molbind_data, molbind_jax; print('setup ok: jax', jax.__version__)"
	touch $(STAMP)

# The whole suite (fast and slow tests). CI runs exactly this. Two workers, each test file on
# one of them (module fixtures built once); TEST_WORKERS=0 runs in this process. numpy's
# OpenBLAS runs one thread per worker: its default of one per core on both workers
# oversubscribes the two cores (a 0.1 s fit took 10 s under load).
TEST_WORKERS ?= 2
export OPENBLAS_NUM_THREADS ?= 1
test: setup
	$(PY) -m pytest -q --durations=25 -n $(TEST_WORKERS) --dist loadfile tests

# The fast tier, for quick iteration after every change.
test-fast: setup
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile tests

test-slow: setup
	$(PY) -m pytest -q -m slow tests

# The main job: build molbind_mini, train the mini config, export, evaluate.
demo: setup
	bash experiments/demo.sh runs/demo

clean:
	rm -rf .venv
