"""monolith_tf: real-time recommendation training for TensorFlow.

A collisionless cuckoo-hash embedding table exposed as a TensorFlow resource
(``HashTable``), with in-place sparse optimizers, keyed initializers and
checkpoint/SavedModel support, and Keras layers over it
(``monolith_tf.layers``).

Importing this package is cheap: ``HashTable``, ``export_saved_model``,
``make_spec`` and the submodules (``monolith_tf.layers``, ...) are loaded on
first use (with TensorFlow and the op library), so the pure-Python parts (``monolith_tf.streaming``, the joiner, the CLI's
``join`` and ``replay``) start without TensorFlow. Before loading a saved
model that holds our layers or ops, import ``monolith_tf.layers`` (it
registers the layers with Keras and loads the op library).
"""

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first access.
_LAZY_EXPORTS = {
    "HashTable": "monolith_tf.table",
    "export_saved_model": "monolith_tf.export",
    "make_spec": "monolith_tf.specs",
}

__all__ = sorted(_LAZY_EXPORTS)


def __getattr__(name):
    if name in _LAZY_EXPORTS:
        value = getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
        globals()[name] = value  # later accesses skip this function
        return value
    # ``monolith_tf.layers`` and the other submodules, imported on first use.
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_EXPORTS))
