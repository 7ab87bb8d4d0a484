"""Shared fixtures. TensorFlow tests import monolith_tf lazily so that the core
tests (tests/core) also run where only the core extension is built."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
