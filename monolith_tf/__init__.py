"""monolith_tf: real-time recommendation training for TensorFlow.

A collisionless cuckoo-hash embedding table exposed as a TensorFlow resource
(``HashTable``), with in-place sparse optimizers, keyed initializers and
checkpoint/SavedModel support, and Keras layers over it
(``monolith_tf.layers``). Importing this package loads the op library.
"""

from monolith_tf.specs import make_spec
from monolith_tf.table import HashTable
from monolith_tf.serving import export_saved_model

__all__ = ["HashTable", "export_saved_model", "make_spec"]
__version__ = "0.1.0"
