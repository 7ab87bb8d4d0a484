"""The serving export's on-disk facts, readable without TensorFlow or Keras.

Both sides of the online loop read these: the trainer's export writer
(``monolith_tf.export``) and sync publisher write them, the model server and
the sync agent read them. Nothing here imports TensorFlow.

- **Version directories**: a TF Serving model base path holds numbered
  version directories, ``BASE/<version>/saved_model.pb``, zero-padded or not
  (``version_directories``, ``list_versions``, ``version_path``).
- **Serving metadata** (``assets/monolith_serving.json``, format 1): the row
  dtype, the tables and their dims, the dense weights in ``assign_dense``
  input order, and the dense version (``write_metadata_file``,
  ``read_metadata``).
- **Sync state** (``assets.extra/monolith_sync.json``, format 1): what a base
  version covers of the sync stream: ``topic``, ``offsets`` {partition: next
  offset}, ``push``, ``step``, ``data_time``, ``dense_version``,
  ``publisher``, ``wall_time`` (``sync_state``, ``write_sync_state``,
  ``read_sync_state``; the format is checked on read).
- **The float16 row codec**: float16 rows are packed two halves per int32
  value (stock hash tables hold no float16); ``FLOAT16_MAX`` is the largest
  value a float16 row may hold, ``unpack_half_rows`` reads packed rows back.
"""

import json
import os

import numpy as np

METADATA_FILE = "monolith_serving.json"
METADATA_FORMAT = 1
SYNC_STATE_FILE = os.path.join("assets.extra", "monolith_sync.json")
SYNC_STATE_FORMAT = 1
ROW_DTYPES = ("float32", "float16")
FLOAT16_MAX = 65504.0


class ExportFormatError(ValueError):
    """An export's metadata or sync state is missing, unreadable or of
    another format."""


def version_directories(base_path):
    """``{version: directory name}`` of a TF Serving model base path: the
    all-digit directory names holding a ``saved_model.pb``. Names keep their
    own spelling, so zero-padded ones (``00000123``, as TF Serving's test
    data has them) are found; of two names for one version the shorter
    wins."""
    try:
        entries = sorted(os.listdir(base_path), key=len, reverse=True)
    except FileNotFoundError:
        return {}
    return {int(name): name for name in entries if name.isdigit() and
            os.path.isfile(os.path.join(base_path, name, "saved_model.pb"))}


def version_path(base_path, version):
    """The directory of ``version`` under the model base path ``base_path``:
    the existing directory of that number (whatever its zero padding), else
    ``BASE/<version>`` (where a new version is written)."""
    name = version_directories(base_path).get(int(version), str(version))
    return os.path.join(base_path, name)


def list_versions(base_path):
    """Version numbers under a TF Serving model base path (see
    ``version_directories``), ascending."""
    return sorted(version_directories(base_path))


def write_metadata_file(directory, tables, row_dtype, dense, dense_version):
    """Writes the export's facts as JSON in ``directory`` (for the SavedModel
    to copy into ``assets/``) and returns its path. ``tables``: [(name,
    dim)]; ``dense``: [(name, shape, dtype name)] in ``assign_dense`` input
    order. Stock TF Serving ignores the file; our server and agent read it."""
    facts = {
        "format": METADATA_FORMAT,
        "row_dtype": row_dtype,
        "tables": [{"name": name, "dim": dim} for name, dim in tables],
        "dense": [{"input": f"dense_{i}", "name": name, "shape": list(shape), "dtype": dtype}
                  for i, (name, shape, dtype) in enumerate(dense)],
        "dense_version": dense_version,
    }
    path = os.path.join(directory, METADATA_FILE)
    with open(path, "w") as out:
        json.dump(facts, out, indent=1)
    return path


def _read_json(path, what):
    try:
        with open(path) as source:
            facts = json.load(source)
    except ValueError as error:
        raise ExportFormatError(f"{path}: {what} is not JSON ({error})") from None
    if not isinstance(facts, dict):
        raise ExportFormatError(f"{path}: {what} must be a JSON object")
    return facts


def read_metadata(export_dir):
    """The facts ``export_saved_model`` wrote beside the SavedModel at
    ``export_dir`` (tables, dims, dense inputs). Raises ExportFormatError
    (a ValueError) for an export without them or of another format."""
    path = os.path.join(export_dir, "assets", METADATA_FILE)
    try:
        facts = _read_json(path, "serving metadata")
    except FileNotFoundError:
        raise ExportFormatError(f"{export_dir}: no assets/{METADATA_FILE}; export the model "
                                "with monolith_tf.export_saved_model") from None
    if facts.get("format") != METADATA_FORMAT:
        raise ExportFormatError(f"{path}: format {facts.get('format')!r}, "
                                f"expected {METADATA_FORMAT}")
    return facts


def sync_state(topic, offsets, push, step, data_time, dense_version, publisher, wall_time):
    """A base version's sync state (module doc), as written to disk."""
    return {"format": SYNC_STATE_FORMAT, "topic": topic,
            "offsets": {str(p): int(o) for p, o in offsets.items()}, "push": int(push),
            "step": int(step), "data_time": data_time, "dense_version": int(dense_version),
            "publisher": publisher, "wall_time": wall_time}


def write_sync_state(export_dir, state):
    """Stores ``state`` (``sync_state``'s dict) as ``assets.extra/monolith_sync.json``
    (TF Serving's place for extra files) of the export at ``export_dir``."""
    os.makedirs(os.path.join(export_dir, "assets.extra"), exist_ok=True)
    with open(os.path.join(export_dir, SYNC_STATE_FILE), "w") as out:
        json.dump(state, out, indent=1)


def read_sync_state(export_dir):
    """What a base version covers of the sync stream (module doc), with
    ``offsets`` as {int partition: int offset}; None for an export made
    without sync. Raises ExportFormatError for a state file of another
    format or without offsets."""
    path = os.path.join(export_dir, SYNC_STATE_FILE)
    try:
        state = _read_json(path, "sync state")
    except FileNotFoundError:
        return None
    if state.get("format") != SYNC_STATE_FORMAT:
        raise ExportFormatError(f"{path}: format {state.get('format')!r}, "
                                f"expected {SYNC_STATE_FORMAT}")
    offsets = state.get("offsets")
    if not isinstance(offsets, dict):
        raise ExportFormatError(f"{path}: 'offsets' must map partitions to offsets")
    try:
        state["offsets"] = {int(p): int(o) for p, o in offsets.items()}
    except (TypeError, ValueError):
        raise ExportFormatError(f"{path}: offsets must be integers, got {offsets!r}") from None
    return state


def check_row_dtype(row_dtype):
    """Raises ValueError unless ``row_dtype`` is ``float32`` or ``float16``."""
    if row_dtype not in ROW_DTYPES:
        raise ValueError(f"row_dtype must be one of {sorted(ROW_DTYPES)}, got {row_dtype!r}")


def fits_float16(values):
    """Whether every element of ``values`` is within float16's range."""
    values = np.asarray(values)
    return not values.size or float(np.abs(values).max()) <= FLOAT16_MAX


def unpack_half_rows(packed, dim):
    """float16 rows packed two halves per int32 (``[n, ceil(dim / 2)]``) as
    float32 ``[n, dim]``."""
    packed = np.ascontiguousarray(packed, np.int32)
    return packed.view(np.float16).reshape(len(packed), -1)[:, :dim].astype(np.float32)
