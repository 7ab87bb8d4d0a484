"""The sync stream's records: pushes of rows and dense weights, from the
training worker to every serving replica (format version 1).

Each record is a serialized ``tf.train.Example`` (written and read through
``monolith_tf.example_proto``, without loading TensorFlow; no pickle; any
TensorFlow install reads it). Arrays travel as raw little-endian bytes in ``bytes``
features (decoded with ``numpy.frombuffer``: a 10k-row push is a few copies
of its payload), covered by a CRC-32 so that a flipped bit is a refused
record, not a wrong row. Fields of every record:

  ``format``      int64 [1]  1
  ``kind``        bytes [1]  ``rows`` or ``dense``
  ``publisher``   bytes [1]  which trainer wrote it
  ``push``        int64 [1]  the publisher's push number (all records of one
                             push share it)
  ``step``        int64 [1]  the trainer's global step when it was taken
  ``data_time``   int64 [1]  newest data time (seconds) trained into it, or -1
  ``wall_time_us`` int64 [1] when it was published (microseconds since epoch)
  ``checksum``    int64 [1]  CRC-32 of every other field (name, then its
                             serialized Feature), in name order

``rows`` (one table's changes since the previous push; large pushes are
split into several records of the same push):
  ``table``       bytes [1]  ``<layer>/<feature>`` (``schema.table_name``)
  ``dim``         int64 [1]
  ``row_dtype``   bytes [1]  ``float32`` or ``float16`` (values on the wire)
  ``ids``         bytes      int64 [n] little-endian
  ``values``      bytes      row_dtype [n, dim]
  ``removed``     bytes      int64 [m]: ids removed or evicted since

``dense`` (all dense weights, a new dense version):
  ``dense_version`` int64 [1]
  ``weights``     int64 [1]  how many
  ``weight/<i>/dtype`` bytes [1], ``weight/<i>/shape`` int64 [rank],
  ``weight/<i>/data`` bytes: in ``assets/monolith_serving.json`` order
"""

import dataclasses
import time
import zlib

import numpy as np
from google.protobuf.message import DecodeError

from monolith_tf import example_proto
from monolith_tf.export_format import check_row_dtype, fits_float16

FORMAT = 1
# Wire dtypes of the export format's row dtypes.
WIRE_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


class SyncRecordError(ValueError):
    """A sync record is truncated, corrupt, or not of this format."""


@dataclasses.dataclass
class RowsPush:
    """Changed rows of one table: ``ids`` int64 [n], ``values`` float32
    [n, dim] (decoded to float32 whatever the wire dtype), ``removed`` int64."""

    table: str
    ids: np.ndarray
    values: np.ndarray
    removed: np.ndarray
    publisher: str = ""
    push: int = 0
    step: int = 0
    data_time: int = -1
    wall_time: float = 0.0
    row_dtype: str = "float32"


@dataclasses.dataclass
class DensePush:
    """All dense weights as dense version ``version``."""

    version: int
    weights: list
    publisher: str = ""
    push: int = 0
    step: int = 0
    data_time: int = -1
    wall_time: float = 0.0


_int64 = example_proto.int64_feature


def _bytes(*values):
    return example_proto.bytes_feature(values)


def _header(kind, push):
    wall = push.wall_time or time.time()
    return {"format": _int64([FORMAT]), "kind": _bytes(kind),
            "publisher": _bytes(push.publisher.encode()), "push": _int64([push.push]),
            "step": _int64([push.step]), "data_time": _int64([push.data_time]),
            "wall_time_us": _int64([int(wall * 1e6)])}


def checksum_of(features):
    """CRC-32 over every field but ``checksum``, in name order."""
    checksum = 0
    for name in sorted(features):
        if name != "checksum":
            checksum = zlib.crc32(name.encode(), checksum)
            checksum = zlib.crc32(features[name].SerializeToString(deterministic=True), checksum)
    return checksum


def _serialize(features):
    features["checksum"] = _int64([checksum_of(features)])
    return example_proto.Example(features=example_proto.Features(feature=features)).SerializeToString()


def encode_rows(push):
    """Serializes a RowsPush. Raises ValueError for mismatched shapes or, with
    ``row_dtype="float16"``, values beyond float16's range."""
    ids = np.ascontiguousarray(push.ids, dtype="<i8")
    values = np.asarray(push.values, dtype=np.float32)
    removed = np.ascontiguousarray(push.removed, dtype="<i8")
    if values.ndim != 2 or values.shape[0] != ids.shape[0]:
        raise ValueError(f"values must be [len(ids), dim], got {list(values.shape)} for "
                         f"{ids.shape[0]} ids")
    check_row_dtype(push.row_dtype)
    if push.row_dtype == "float16" and not fits_float16(values):
        raise ValueError(f"{push.table}: values beyond float16's range; push float32 rows")
    wire = np.ascontiguousarray(values, dtype=WIRE_DTYPES[push.row_dtype])
    features = _header(b"rows", push)
    features.update({"table": _bytes(push.table.encode()), "dim": _int64([values.shape[1]]),
                     "row_dtype": _bytes(push.row_dtype.encode()), "ids": _bytes(ids.tobytes()),
                     "values": _bytes(wire.tobytes()), "removed": _bytes(removed.tobytes())})
    return _serialize(features)


def encode_dense(push):
    """Serializes a DensePush."""
    arrays = [np.asarray(w) for w in push.weights]  # (ascontiguousarray would make 0-d 1-d)
    payload = [a.astype(a.dtype.newbyteorder("<")).tobytes(order="C") for a in arrays]
    features = _header(b"dense", push)
    features.update({"dense_version": _int64([push.version]),
                     "weights": _int64([len(arrays)])})
    for i, (array, data) in enumerate(zip(arrays, payload)):
        features[f"weight/{i}/dtype"] = _bytes(array.dtype.name.encode())
        features[f"weight/{i}/shape"] = _int64(array.shape)
        features[f"weight/{i}/data"] = _bytes(data)
    return _serialize(features)


def _one(features, name, kind="int64"):
    if name not in features:
        raise SyncRecordError(f"sync record lacks {name!r}")
    values = (features[name].int64_list.value if kind == "int64"
              else features[name].bytes_list.value)
    if len(values) != 1:
        raise SyncRecordError(f"sync record field {name!r} must hold one value")
    return values[0]


def decode(data):
    """A RowsPush or DensePush from a record's bytes. Raises SyncRecordError
    for anything truncated, corrupt or of another format."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or not data:
        raise SyncRecordError("empty sync record")
    example = example_proto.Example()
    try:
        example.ParseFromString(bytes(data))
    except DecodeError as error:
        raise SyncRecordError(f"unreadable sync record: {error}") from None
    features = example.features.feature
    if checksum_of(features) != _one(features, "checksum"):
        raise SyncRecordError("sync record checksum mismatch (corrupt record)")
    version = _one(features, "format")
    if version != FORMAT:
        raise SyncRecordError(f"sync record format {version}, this reader knows {FORMAT}")
    kind = _one(features, "kind", "bytes")
    common = dict(publisher=_one(features, "publisher", "bytes").decode("utf-8", "replace"),
                  push=_one(features, "push"), step=_one(features, "step"),
                  data_time=_one(features, "data_time"),
                  wall_time=_one(features, "wall_time_us") / 1e6)
    if kind == b"rows":
        payload = [_one(features, name, "bytes") for name in ("ids", "values", "removed")]
        return _decode_rows(features, payload, common)
    if kind == b"dense":
        count = _one(features, "weights")
        payload = [_one(features, f"weight/{i}/data", "bytes") for i in range(count)]
        weights = []
        for i, data in enumerate(payload):
            dtype_name = _one(features, f"weight/{i}/dtype", "bytes").decode()
            try:
                dtype = np.dtype(dtype_name).newbyteorder("<")
            except TypeError:
                raise SyncRecordError(f"weight {i}: unknown dtype {dtype_name!r}") from None
            shape = list(features[f"weight/{i}/shape"].int64_list.value)
            if len(data) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise SyncRecordError(f"weight {i}: {len(data)} bytes do not make {shape} "
                                      f"{dtype_name}")
            weights.append(np.frombuffer(data, dtype).reshape(shape).astype(dtype_name))
        return DensePush(version=_one(features, "dense_version"), weights=weights, **common)
    raise SyncRecordError(f"unknown sync record kind {kind!r}")


def _decode_rows(features, payload, common):
    ids_data, values_data, removed_data = payload
    dim = _one(features, "dim")
    row_dtype = _one(features, "row_dtype", "bytes").decode("utf-8", "replace")
    if row_dtype not in WIRE_DTYPES or dim <= 0:
        raise SyncRecordError(f"bad row_dtype {row_dtype!r} or dim {dim}")
    if len(ids_data) % 8 or len(removed_data) % 8:
        raise SyncRecordError("ids or removed ids are not whole int64s")
    rows = len(ids_data) // 8
    if len(values_data) != rows * dim * WIRE_DTYPES[row_dtype].itemsize:
        raise SyncRecordError(f"values hold {len(values_data)} bytes, {rows} rows of dim "
                              f"{dim} need {rows * dim * WIRE_DTYPES[row_dtype].itemsize}")
    values = np.frombuffer(values_data, WIRE_DTYPES[row_dtype]).reshape(rows, dim)
    return RowsPush(table=_one(features, "table", "bytes").decode("utf-8", "replace"),
                    ids=np.frombuffer(ids_data, "<i8").astype(np.int64),
                    values=values.astype(np.float32),
                    removed=np.frombuffer(removed_data, "<i8").astype(np.int64),
                    row_dtype=row_dtype, **common)
