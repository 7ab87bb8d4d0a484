# monolith_tf build. `make demo` and `make test` set everything up from a
# fresh checkout: virtualenv, pinned dependencies, the op library, the core.

PYTHON ?= python3.11
VENV ?= .venv
PY ?= $(VENV)/bin/python
CXX ?= g++
BUILD := build
EXT_SUFFIX_FILE := $(BUILD)/ext_suffix.txt
TF_CFLAGS_FILE := $(BUILD)/tf_cflags.txt
TF_LFLAGS_FILE := $(BUILD)/tf_lflags.txt

CXXFLAGS_COMMON := -std=c++17 -O3 -fno-math-errno -fPIC -Wall -Wextra -Wno-unused-parameter -I.
CORE_SRCS := $(wildcard cc/table/*.cc)
OPS_SRCS := $(wildcard cc/ops/*.cc)
CORE_HDRS := $(wildcard cc/table/*.h)
OPS_HDRS := $(wildcard cc/ops/*.h)
CORE_OBJS := $(patsubst cc/%.cc,$(BUILD)/obj/%.o,$(CORE_SRCS))
OPS_OBJS := $(patsubst cc/%.cc,$(BUILD)/obj/%.o,$(OPS_SRCS))
OPS_LIB := monolith_tf/libmonolith_ops.so
CORE_EXT_STAMP := $(BUILD)/core_ext.stamp
PYTEST_FLAGS ?=
# USE_VENV=0 builds with the given PY as is (setup.py does this inside pip).
USE_VENV ?= 1
DEPS_STAMP := $(if $(filter 1,$(USE_VENV)),$(VENV)/.deps-stamp,)
MAKEFLAGS += -j2

.PHONY: all deps native installed wheel data demo test test-keras3 test-native test-tf-keras check \
        test-faults asan tsan cc-test bench \
        bench-soak bench-peers bench-limits clean flink-venv experiments

all: native

# Virtualenv with the pinned dependencies; redone when requirements change.
$(VENV)/.deps-stamp: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $@

deps: $(VENV)/.deps-stamp

# PyFlink in a virtualenv of its own: it pins protobuf and numpy versions
# that conflict with TensorFlow 2.21. Runs flink/joiner_job.py (Java 11+).
FLINK_VENV ?= .venv-flink
$(FLINK_VENV)/.deps-stamp: flink/requirements.txt
	test -x $(FLINK_VENV)/bin/python || $(PYTHON) -m venv $(FLINK_VENV)
	$(FLINK_VENV)/bin/python -m pip install --upgrade pip
	$(FLINK_VENV)/bin/python -m pip install -r flink/requirements.txt
	touch $@

flink-venv: $(FLINK_VENV)/.deps-stamp

# TensorFlow 2.16 and TFRA 0.8.1 (TFRA supports no newer TensorFlow) in a
# virtualenv of their own, for the peer comparison of `make bench-peers`.
PEERS_VENV ?= .venv-peers
$(PEERS_VENV)/.deps-stamp: bench/peers-requirements.txt
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install -r bench/peers-requirements.txt
	touch $@

$(BUILD)/flags.stamp: $(DEPS_STAMP)
	mkdir -p $(BUILD)
	$(PY) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))" > $(EXT_SUFFIX_FILE)
	$(PY) -c "import tensorflow as tf; print(' '.join(tf.sysconfig.get_compile_flags()))" > $(TF_CFLAGS_FILE) 2>/dev/null
	$(PY) -c "import tensorflow as tf; print(' '.join(tf.sysconfig.get_link_flags()))" > $(TF_LFLAGS_FILE) 2>/dev/null
	$(PY) -c "import pybind11; print(pybind11.get_include())" > $(BUILD)/pybind_include.txt
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['include'])" > $(BUILD)/python_include.txt
	touch $@

$(BUILD)/obj/table/%.o: cc/table/%.cc $(CORE_HDRS) $(BUILD)/flags.stamp
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS_COMMON) -D_GLIBCXX_USE_CXX11_ABI=1 -c $< -o $@

$(BUILD)/obj/ops/%.o: cc/ops/%.cc $(OPS_HDRS) $(CORE_HDRS) $(BUILD)/flags.stamp
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS_COMMON) -Wno-deprecated-declarations -Wno-sign-compare -Wno-interference-size $$(cat $(TF_CFLAGS_FILE)) -c $< -o $@

$(OPS_LIB): $(CORE_OBJS) $(OPS_OBJS)
	$(CXX) -shared $^ -o $@ $$(cat $(TF_LFLAGS_FILE))

$(CORE_EXT_STAMP): cc/pybind/core_bindings.cc $(CORE_OBJS) $(CORE_HDRS)
	$(CXX) $(CXXFLAGS_COMMON) -D_GLIBCXX_USE_CXX11_ABI=1 -shared \
	  -I$$(cat $(BUILD)/pybind_include.txt) -I$$(cat $(BUILD)/python_include.txt) \
	  cc/pybind/core_bindings.cc $(CORE_OBJS) -o monolith_tf/_core$$(cat $(EXT_SUFFIX_FILE))
	touch $@

native: $(OPS_LIB) $(CORE_EXT_STAMP)

# monolith_tf installed (editable) into the virtualenv, so scripts and
# notebooks anywhere import it without PYTHONPATH; the libraries are the ones
# `native` builds in place. "compat" mode puts the checkout on sys.path through
# a .pth file, after PYTHONPATH, so a run that puts another build first (the
# ASan run) gets it; the default mode's import hook would win over PYTHONPATH.
INSTALLED_STAMP := $(VENV)/.monolith-installed
$(INSTALLED_STAMP): setup.py $(DEPS_STAMP)
	$(PY) -m pip install --no-build-isolation --no-deps \
	  --config-settings editable_mode=compat -e .
	touch $@

installed: native $(INSTALLED_STAMP)

# A wheel with both libraries inside, tagged with the TensorFlow it was built
# against (0.1.0+tf<version>), in dist/.
wheel: native
	MONOLITH_BUILD_DIR=$(BUILD) $(PY) -m pip wheel --no-build-isolation --no-deps -w dist .

# MovieLens 100k, extracted from the recbole wheel (never committed: the
# MovieLens licence forbids redistribution).
ML100K := data/ml-100k/u.data
$(ML100K): $(DEPS_STAMP)
	$(PY) tools/fetch_ml100k.py --out $@

data: $(ML100K)

# The quickstarts, then the main jobs: the training worker on ml-100k files
# (two epochs, sparse and dense checkpoints, TensorBoard logs, serving
# export as version 1 of a model base path), online training (replay -> logs
# -> joiner -> worker), and the model server on the export (REST, gRPC, a
# live row update, SIGTERM).
DEMO_DIR := $(BUILD)/demo
demo: installed data
	$(PY) examples/table_quickstart.py
	$(PY) examples/movielens_quickstart.py
	rm -rf $(DEMO_DIR)
	$(PY) -m monolith_tf train --job examples/movielens_ctr_job.py \
	  --data $(ML100K) --model-dir $(DEMO_DIR)/ctr --epochs 2 --sparse-every-steps 100 \
	  --dense-every-steps 300 --export $(DEMO_DIR)/models/ctr/1
	$(PY) -m monolith_tf inspect $(DEMO_DIR)/ctr
	$(PY) examples/online_quickstart.py --dir $(DEMO_DIR)/online
	$(PY) examples/serving_demo.py --model_base_path $(DEMO_DIR)/models/ctr

# The paper's claims rerun over 5 seeds (collisionless vs hashed ids, online
# vs batch and the sync interval, admission/expiry): writes docs/experiments.md,
# docs/experiments.json and the plots beside them, from scratch.
experiments: installed data
	$(PY) -m experiments all --out docs

# Every test prints its 30 slowest and lists each skip with its reason.
PYTEST_REPORT := --durations=30 -rs
# pytest-xdist workers of `make test-keras3`: more than the 2 cores, since
# many integration tests wait on child processes, sockets and timers;
# worksteal balances tests of very unequal length.
TEST_WORKERS ?= 3

# The whole suite, in three parts run two at a time (MAKEFLAGS has -j2), so
# both cores stay busy while a part waits on timers or child processes; each
# part's output is printed whole when it ends. CI runs this.
#  - test-keras3: every Python test under Keras 3 (unit, integration and slow;
#    kill points in a seeded rotation), on pytest-xdist workers;
#  - test-native: the core under ASan and TSan, and its C++ tests;
#  - test-tf-keras: the tests marked keras_flavours (code that differs
#    between the two Kerases) and tests/legacy_keras (TFRS) under tf_keras,
#    in one process (it runs beside the others: workers would only add
#    start-up work).
test: installed data flink-venv
	$(MAKE) --no-print-directory --output-sync=target test-keras3 test-native test-tf-keras

test-keras3: installed data flink-venv
	$(PY) -m pytest tests -q -n $(TEST_WORKERS) --dist worksteal --ignore=tests/legacy_keras \
	  $(PYTEST_REPORT) $(PYTEST_FLAGS)

test-native: asan tsan cc-test

# Files holding keras_flavours tests (collected under tf_keras too).
KERAS_FLAVOUR_FILES := tests/test_layers.py tests/test_layer_conformance.py \
  tests/test_memory_control_ops.py tests/test_export.py tests/test_cli.py tests/test_training.py \
  tests/legacy_keras
test-tf-keras: installed data
	TF_USE_LEGACY_KERAS=1 PYTHONPATH=$(CURDIR) $(PY) -m pytest $(KERAS_FLAVOUR_FILES) -q \
	  -p no:xdist -m keras_flavours $(PYTEST_REPORT) $(PYTEST_FLAGS)

# The unit tier, for the edit-test loop: in-process tests only (no child
# process, no socket: tests/conftest.py enforces it), neither slow nor
# integration; about two minutes here.
check: installed data
	MONOLITH_UNIT_TIER=1 $(PY) -m pytest tests -q -n 2 --dist worksteal -m "not slow and not integration" \
	  --ignore=tests/legacy_keras $(PYTEST_REPORT) $(PYTEST_FLAGS)

# The fault tests with every kill of the seeded plan (make test runs a
# rotation: every kill point, one of its kills, chosen by a seed it prints).
test-faults: installed data
	MONOLITH_KILLS=all $(PY) -m pytest tests/faults -q -n 2 --dist worksteal $(PYTEST_REPORT) \
	  $(PYTEST_FLAGS)

# The core and its bindings built with AddressSanitizer, run against the core
# tests in a package holding only the core (TensorFlow is not loaded). Built
# as file targets, one object per source (rebuilt only when the core or its
# bindings change); the core's objects also link the C++ tests (cc-test).
# The pybind11 glue is compiled at -O0: UBSan over its templates at -O1
# costs more compile time than the whole core, for code that does no work.
ASAN_DIR := $(BUILD)/asan
TSAN_DIR := $(BUILD)/tsan
SANITIZE_COMMON := -std=c++17 -g -fno-omit-frame-pointer -fPIC -I.
ASAN_FLAGS := $(SANITIZE_COMMON) -fsanitize=address,undefined -fno-sanitize-recover=undefined
TSAN_FLAGS := $(SANITIZE_COMMON) -fsanitize=thread -Wno-tsan
ASAN_CORE_OBJS := $(patsubst cc/%.cc,$(ASAN_DIR)/obj/%.o,$(CORE_SRCS))
TSAN_CORE_OBJS := $(patsubst cc/%.cc,$(TSAN_DIR)/obj/%.o,$(CORE_SRCS))
PYBIND_INCLUDES = -I$$(cat $(BUILD)/pybind_include.txt) -I$$(cat $(BUILD)/python_include.txt)

$(ASAN_DIR)/obj/table/%.o: cc/table/%.cc $(CORE_HDRS)
	@mkdir -p $(dir $@)
	$(CXX) $(ASAN_FLAGS) -O1 -c $< -o $@

$(TSAN_DIR)/obj/table/%.o: cc/table/%.cc $(CORE_HDRS)
	@mkdir -p $(dir $@)
	$(CXX) $(TSAN_FLAGS) -O1 -c $< -o $@

$(ASAN_DIR)/obj/core_bindings.o: cc/pybind/core_bindings.cc $(CORE_HDRS) $(BUILD)/flags.stamp
	@mkdir -p $(dir $@)
	$(CXX) $(ASAN_FLAGS) -O0 $(PYBIND_INCLUDES) -c $< -o $@

$(TSAN_DIR)/obj/core_bindings.o: cc/pybind/core_bindings.cc $(CORE_HDRS) $(BUILD)/flags.stamp
	@mkdir -p $(dir $@)
	$(CXX) $(TSAN_FLAGS) -O0 $(PYBIND_INCLUDES) -c $< -o $@

$(ASAN_DIR)/core.stamp: $(ASAN_CORE_OBJS) $(ASAN_DIR)/obj/core_bindings.o
	mkdir -p $(ASAN_DIR)/monolith_tf
	touch $(ASAN_DIR)/monolith_tf/__init__.py
	$(CXX) -shared -fsanitize=address,undefined $^ -o $(ASAN_DIR)/monolith_tf/_core$$(cat $(EXT_SUFFIX_FILE))
	touch $@

asan: $(ASAN_DIR)/core.stamp
	cd $(ASAN_DIR) && LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so) $$($(CXX) -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  MONOLITH_ASAN=1 PYTHONPATH=$(CURDIR)/$(ASAN_DIR):$(CURDIR)/tests $(CURDIR)/$(VENV)/bin/pytest \
	  -q -p no:cacheprovider -p no:xdist --rootdir=$(CURDIR)/$(ASAN_DIR) $(CURDIR)/tests/core

# The core and its bindings built with ThreadSanitizer (file targets, as
# above), run against the tests where threads race on one table (lookups,
# applies, inserts with growth, eviction, removal, exports and sync pushes).
# Any report fails the run; cc/tsan_suppressions.txt lists the intended
# races (optimistic row copies) and why.
TSAN_TESTS := $(CURDIR)/tests/core/test_concurrency.py \
  "$(CURDIR)/tests/core/test_memory_control.py::test_eviction_during_concurrent_lookups_and_growth_keeps_live_entries" \
  "$(CURDIR)/tests/core/test_sync_changes.py::test_replica_of_concurrent_pushes_equals_the_table"
$(TSAN_DIR)/core.stamp: $(TSAN_CORE_OBJS) $(TSAN_DIR)/obj/core_bindings.o
	mkdir -p $(TSAN_DIR)/monolith_tf
	touch $(TSAN_DIR)/monolith_tf/__init__.py
	$(CXX) -shared -fsanitize=thread $^ -o $(TSAN_DIR)/monolith_tf/_core$$(cat $(EXT_SUFFIX_FILE))
	touch $@

tsan: $(TSAN_DIR)/core.stamp
	cd $(TSAN_DIR) && LD_PRELOAD="$$($(CXX) -print-file-name=libtsan.so)" \
	  TSAN_OPTIONS="halt_on_error=1 exitcode=66 history_size=7 suppressions=$(CURDIR)/cc/tsan_suppressions.txt" \
	  MONOLITH_TSAN=1 PYTHONPATH=$(CURDIR)/$(TSAN_DIR):$(CURDIR)/tests $(CURDIR)/$(VENV)/bin/pytest \
	  -q -s -p no:cacheprovider -p no:xdist --rootdir=$(CURDIR)/$(TSAN_DIR) $(TSAN_TESTS)

# C++ unit tests of the core (index, arena, config), with ASan and UBSan (the
# AddressSanitizer run's core objects); g++ only.
CC_TEST := $(BUILD)/core_test
$(CC_TEST): cc/tests/core_test.cc $(ASAN_CORE_OBJS) $(CORE_HDRS)
	@mkdir -p $(BUILD)
	$(CXX) $(ASAN_FLAGS) -O1 cc/tests/core_test.cc $(ASAN_CORE_OBJS) -o $@

cc-test: $(CC_TEST)
	ASAN_OPTIONS=detect_leaks=1 $(CC_TEST)

bench: native
	PYTHONPATH=$(CURDIR) $(PY) bench/table_bench.py

# This machine's floors for the table's row traffic, with no hashing and no
# TensorFlow (bench/row_limit.cc): random rows read, written and updated.
ROW_LIMIT := $(BUILD)/row_limit
$(ROW_LIMIT): bench/row_limit.cc cc/table/entry_arena.cc cc/table/huge_pages.cc $(CORE_HDRS)
	@mkdir -p $(BUILD)
	$(CXX) $(CXXFLAGS_COMMON) bench/row_limit.cc cc/table/entry_arena.cc cc/table/huge_pages.cc \
	  -o $@ -pthread

bench-limits: $(ROW_LIMIT)
	$(ROW_LIMIT)

# Ten minutes of replay -> join -> train with expiry and checkpoints; memory,
# rows and files must stay flat after warm-up (bench/soak.py; a one-minute run
# is part of make test). Samples go to build/soak.json.
# Our table against TFRA 0.8.1 and a dense tf.gather, alternating in one run.
bench-peers: native $(PEERS_VENV)/.deps-stamp
	PYTHONPATH=$(CURDIR) $(PY) bench/peers_bench.py --peer-python $(PEERS_VENV)/bin/python

bench-soak: installed
	$(PY) bench/soak.py --seconds 600 --dir $(BUILD)/soak --json $(BUILD)/soak.json

clean:
	rm -rf $(BUILD) $(OPS_LIB) monolith_tf/_core*.so dist
