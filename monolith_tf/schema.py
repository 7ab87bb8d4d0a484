"""What the C++ core says about tables, and the names tables go by.

The core owns a table's defaults, the names and order of its stats counters
and exported row fields, and each optimizer's state width; this module reads
them from the op library (plain C functions, through ctypes: no TensorFlow
op runs) so that Python never restates them. A new optimizer added in C++
is therefore known here, to checkpoints and to exports, without a Python
change.

Table names: a layer's table is called ``<layer name>/<feature>`` in
TensorBoard tags and the serving export's ``upsert`` signature; sparse
checkpoints (their files and manifests) use ``<layer name>.<feature>``, the
same name with the slash, which cannot be part of a file name, replaced.
``table_name`` and ``table_file_name`` are the only places that spell these.
"""

import ctypes
import functools
import json

import numpy as np

from monolith_tf.ops import LIBRARY_PATH, table_ops  # noqa: F401 (loads the library first)

_library = ctypes.CDLL(LIBRARY_PATH)
_library.monolith_table_schema_json.restype = ctypes.c_char_p
_library.monolith_optimizer_state_dim.restype = ctypes.c_int
_library.monolith_optimizer_state_dim.argtypes = [ctypes.c_char_p, ctypes.c_int,
                                                  ctypes.c_char_p, ctypes.c_int]

_SCHEMA = json.loads(_library.monolith_table_schema_json().decode())

#: Constructor defaults of a table (everything but ``dim``), as the core has them.
TABLE_DEFAULTS = dict(_SCHEMA["defaults"])
#: Names of ``HashTable.stats()`` counters, in the order the stats op returns them.
STATS_FIELDS = tuple(_SCHEMA["stats_fields"])
#: Fields of exported / imported rows, in op order, and their numpy dtypes.
ROW_FIELDS = tuple(name for name, _ in _SCHEMA["row_fields"])
ROW_FIELD_DTYPES = {name: np.dtype(dtype) for name, dtype in _SCHEMA["row_fields"]}


@functools.lru_cache(maxsize=None)
def optimizer_state_dim(optimizer, dim):
    """Floats of optimizer state per row for ``optimizer`` (a spec) at ``dim``,
    as the core lays them out. Raises ValueError for a bad spec or dim."""
    error = ctypes.create_string_buffer(512)
    width = _library.monolith_optimizer_state_dim(str(optimizer).encode(), int(dim), error,
                                                  len(error))
    if width < 0:
        raise ValueError(error.value.decode())
    return width


def table_name(layer_name, feature):
    """The name of ``feature``'s table in layer ``layer_name``: ``layer/feature``."""
    return f"{layer_name}/{feature}"


def table_file_name(name):
    """The file-system form of a table name: ``layer.feature``."""
    return name.replace("/", ".")
