"""Importing TensorFlow without its start-up noise, for the command line
and the examples: a user who runs ``python -m monolith_tf --help`` or a
quickstart should see our output, not a page of oneDNN, CUDA-probe and
cuInit lines. Nothing here imports TensorFlow at module import."""

import importlib
import os
import sys
import tempfile


def import_tensorflow():
    """Imports TensorFlow without its start-up lines (oneDNN, CUDA probes,
    cuInit) unless the user set ``TF_CPP_MIN_LOG_LEVEL`` below 3. The
    C++ libraries print some of those lines while they load, before any
    log level applies, so standard error is set aside during the import and
    given back whole if the import fails. Returns the ``tensorflow`` module.
    ``TF_CPP_MIN_LOG_LEVEL`` is set to 3 for the process (errors TensorFlow
    raises still reach the caller as exceptions; set the variable to 0, 1 or 2
    to see its log lines)."""
    # A level the user chose below 3 asks for log lines; 3 (also what this
    # function sets, inherited by child processes) asks for none.
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3") != "3":
        return importlib.import_module("tensorflow")
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            importlib.import_module("tensorflow")
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return sys.modules["tensorflow"]
