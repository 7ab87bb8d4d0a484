"""Loads the op library, once, for the whole package.

Every module that needs a monolith op imports ``table_ops`` from here. A
SavedModel that holds a HashTable can only be loaded in a process that has
imported this module (``import monolith_tf.ops``; ``monolith_tf.layers`` and
``monolith_tf.table`` import it too) or loaded ``libmonolith_ops.so`` itself,
because TensorFlow must know the ops before it reads the graph. A bare
``import monolith_tf`` loads nothing (its exports are lazy).
"""

import os

import tensorflow as tf

LIBRARY_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "libmonolith_ops.so")


def _load_library():
    if not os.path.exists(LIBRARY_PATH):
        raise ImportError(
            f"monolith_tf op library not found at {LIBRARY_PATH}; build it with "
            "`make native` or install with `pip install --no-build-isolation .`")
    return tf.load_op_library(LIBRARY_PATH)


table_ops = _load_library()
