"""Sparse checkpoints: table rows on disk, as full snapshots and deltas.

A checkpoint is a directory ``sparse-<sequence>-<full|delta>`` holding, per
table, row files in chunks (bounded memory: one chunk of one table at a
time), the keys removed since the previous save (deltas), the admission
filter state, and ``manifest.json`` with every file's size and CRC-32. It is
written under a temporary name and renamed when complete, so a directory
with that name is always whole. A delta holds only the rows changed since the
previous save and the keys removed since; restore = newest full + the deltas
after it, in order. A corrupt or truncated file raises CheckpointError naming
it, and ``restore`` falls back to the previous complete chain.

Row file format (little-endian, no pickle), read by ``read_rows``:
  header: magic b"MTSPROWS", u32 version (1), u32 dim, u32 state_dim, u64 rows
  then keys int64[rows], values float32[rows*dim], state float32[rows*state_dim],
  timestamps int64[rows], counts int64[rows].
"""

import json
import os
import re
import shutil
import struct
import zlib

import numpy as np

FORMAT = "monolith_tf.sparse/1"
_MAGIC = b"MTSPROWS"
_HEADER = struct.Struct("<8sIIIQ")
_NAME = re.compile(r"^sparse-(\d{8})-(full|delta)$")


class CheckpointError(ValueError):
    """A sparse checkpoint is missing, incomplete, corrupt or does not fit."""


def _fsync_write(path, chunks):
    """Writes byte chunks to ``path``; returns (bytes, crc32)."""
    size, crc = 0, 0
    with open(path, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
            size += len(chunk)
            crc = zlib.crc32(chunk, crc)
        f.flush()
        os.fsync(f.fileno())
    return size, crc


def write_rows(path, rows):
    """Writes one chunk of rows (a dict as HashTable.export returns, numpy);
    returns (bytes, crc32)."""
    keys = np.ascontiguousarray(rows["keys"], np.int64)
    values = np.ascontiguousarray(rows["values"], np.float32)
    state = np.ascontiguousarray(rows["state"], np.float32)
    n, dim = values.shape
    state_dim = state.shape[1]
    header = _HEADER.pack(_MAGIC, 1, dim, state_dim, n)
    arrays = [keys, values, state, np.ascontiguousarray(rows["timestamps"], np.int64),
              np.ascontiguousarray(rows["counts"], np.int64)]
    return _fsync_write(path, [header] + [a.tobytes() for a in arrays])


def read_rows(path, expected_crc=None):
    """Reads a row file back as a dict of numpy arrays; raises CheckpointError
    naming the file when it is truncated, foreign or fails its CRC."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read: {error}") from error
    if expected_crc is not None and zlib.crc32(data) != expected_crc:
        raise CheckpointError(f"{path}: CRC mismatch (corrupt or truncated file)")
    if len(data) < _HEADER.size:
        raise CheckpointError(f"{path}: truncated header")
    magic, version, dim, state_dim, n = _HEADER.unpack_from(data)
    if magic != _MAGIC or version != 1:
        raise CheckpointError(f"{path}: not a monolith_tf row file (magic {magic!r}, "
                              f"version {version})")
    sizes = [8 * n, 4 * n * dim, 4 * n * state_dim, 8 * n, 8 * n]
    if len(data) != _HEADER.size + sum(sizes):
        raise CheckpointError(f"{path}: {len(data)} bytes, expected "
                              f"{_HEADER.size + sum(sizes)} for {n} rows")
    offset, out = _HEADER.size, {}
    for name, dtype, size, shape in (("keys", np.int64, sizes[0], (n,)),
                                     ("values", np.float32, sizes[1], (n, dim)),
                                     ("state", np.float32, sizes[2], (n, state_dim)),
                                     ("timestamps", np.int64, sizes[3], (n,)),
                                     ("counts", np.int64, sizes[4], (n,))):
        out[name] = np.frombuffer(data, dtype, size // np.dtype(dtype).itemsize,
                                  offset).reshape(shape)
        offset += size
    return out


def list_checkpoints(directory):
    """Complete checkpoints in ``directory``, oldest first, as
    (sequence, kind, path); directories without their final name or without
    a manifest are ignored (interrupted saves)."""
    found = []
    if not os.path.isdir(directory):
        return found
    for name in os.listdir(directory):
        match = _NAME.match(name)
        path = os.path.join(directory, name)
        if match and os.path.exists(os.path.join(path, "manifest.json")):
            found.append((int(match.group(1)), match.group(2), path))
    return sorted(found)


class SparseCheckpointer:
    """Saves and restores the rows of named HashTables in ``directory``.

    Args:
      directory: where checkpoint directories go (created if missing).
      tables: ``{name: HashTable}``; names become file names.
      chunk_rows: rows per file, which bounds the memory of a save.
      keep_full: complete chains (a full save and its deltas) to keep.
    """

    def __init__(self, directory, tables, chunk_rows=1 << 20, keep_full=2):
        bad = [name for name in tables if not re.match(r"^[A-Za-z0-9_.-]+$", name)]
        if bad:
            raise ValueError(f"table names must be [A-Za-z0-9_.-]+ (file names), got {bad}")
        self.directory = directory
        self.tables = dict(tables)
        self.chunk_rows = int(chunk_rows)
        self.keep_full = int(keep_full)
        self._base = None  # sequence of the full save the next delta builds on

    def save(self, full=False):
        """Writes a full snapshot (``full=True`` or no full one yet) or a delta
        of the rows changed since the previous save; returns its path."""
        os.makedirs(self.directory, exist_ok=True)
        existing = list_checkpoints(self.directory)
        sequence = existing[-1][0] + 1 if existing else 1
        kind = "full" if full or self._base is None else "delta"
        final = os.path.join(self.directory, f"sparse-{sequence:08d}-{kind}")
        partial = os.path.join(self.directory, f".partial-{sequence:08d}-{kind}")
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        manifest = {"format": FORMAT, "kind": kind, "sequence": sequence,
                    "base": sequence if kind == "full" else self._base, "tables": {}}
        for name, table in self.tables.items():
            manifest["tables"][name] = self._save_table(partial, name, table, kind)
        _fsync_write(os.path.join(partial, "manifest.json"),
                     [json.dumps(manifest, indent=1, sort_keys=True).encode()])
        os.rename(partial, final)
        if kind == "full":
            self._base = sequence
            self._prune()
        return final

    def _save_table(self, partial, name, table, kind):
        delta = kind == "delta"
        removed = table.take_removed().numpy()  # starts the record on a full save
        size = int(table.size())
        num_chunks = max(1, -(-size // self.chunk_rows))
        files = []
        for chunk in range(num_chunks):
            rows = {k: v.numpy() for k, v in table.export(
                chunk, num_chunks, only_dirty=delta, clear_dirty=True).items()}
            file = f"{name}.rows.{chunk:05d}"
            nbytes, crc = write_rows(os.path.join(partial, file), rows)
            stamps = rows["timestamps"]
            # The data-time range goes in the manifest, so inspecting a
            # checkpoint reads no row file.
            files.append({"file": file, "rows": int(len(rows["keys"])), "bytes": nbytes,
                          "crc32": crc,
                          "oldest_update": int(stamps.min()) if len(stamps) else None,
                          "newest_update": int(stamps.max()) if len(stamps) else None})
        entry = {"dim": table.dim, "state_dim": table.state_dim, "config": table.get_config(),
                 "files": files}
        if delta:
            file = f"{name}.removed"
            nbytes, crc = _fsync_write(os.path.join(partial, file),
                                       [np.ascontiguousarray(removed, np.int64).tobytes()])
            entry["removed"] = {"file": file, "keys": int(len(removed)), "bytes": nbytes,
                                "crc32": crc}
        state, now = table.save_filter_state()
        file = f"{name}.filter"
        nbytes, crc = _fsync_write(os.path.join(partial, file), [state.numpy().tobytes()])
        entry["filter"] = {"file": file, "bytes": nbytes, "crc32": crc}
        entry["now"] = int(now)
        return entry

    def _prune(self):
        fulls = [seq for seq, kind, _ in list_checkpoints(self.directory) if kind == "full"]
        if len(fulls) <= self.keep_full:
            return
        oldest_kept = fulls[-self.keep_full]
        for seq, _, path in list_checkpoints(self.directory):
            if seq < oldest_kept:
                shutil.rmtree(path)

    def chains(self):
        """Restorable chains, newest first: lists of checkpoint paths, a full
        one followed by its deltas in order."""
        checkpoints = list_checkpoints(self.directory)
        chains = []
        for index, (seq, kind, path) in enumerate(checkpoints):
            if kind != "full":
                continue
            chain = [path]
            for _, later_kind, later_path in checkpoints[index + 1:]:
                if later_kind == "full":
                    break
                if _read_manifest(later_path).get("base") != seq:
                    break
                chain.append(later_path)
            chains.append(chain)
        return chains[::-1]

    def restore(self):
        """Restores the newest complete chain; falls back to older chains when
        a file is corrupt. Returns the last checkpoint path applied, or None
        when the directory holds no checkpoint. Raises CheckpointError when
        every chain fails (the first error names its file)."""
        if not os.path.isdir(self.directory):
            raise CheckpointError(f"{self.directory}: no such checkpoint directory")
        errors = []
        for chain in self.chains():
            try:
                for path in chain:
                    _verify(path)  # all files first: a bad file changes no table
                for position, path in enumerate(chain):
                    self._apply(path, full=position == 0)
                self._base = int(_read_manifest(chain[0])["sequence"])
                return chain[-1]
            except CheckpointError as error:
                errors.append(error)
        if errors:
            raise CheckpointError(f"no restorable sparse checkpoint: {errors[0]}")
        return None

    def _apply(self, path, full):
        manifest = _read_manifest(path)
        for name, table in self.tables.items():
            entry = manifest["tables"].get(name)
            if entry is None:
                raise CheckpointError(f"{path}: has no table {name!r}")
            if (entry["dim"], entry["state_dim"]) != (table.dim, table.state_dim):
                raise CheckpointError(
                    f"{path}: table {name!r} has dim {entry['dim']} and state_dim "
                    f"{entry['state_dim']}, the model's has dim {table.dim} and state_dim "
                    f"{table.state_dim}")
            for index, info in enumerate(entry["files"]):
                rows = read_rows(os.path.join(path, info["file"]), info["crc32"])
                table.import_rows(**rows, clear=full and index == 0)
            if "removed" in entry:
                removed = np.frombuffer(_read_file(path, entry["removed"]), np.int64)
                if len(removed):
                    table.remove(removed)
            state = np.frombuffer(_read_file(path, entry["filter"]), np.uint8)
            table.restore_filter_state(state, entry["now"])
            # Imported rows come in clean; removals made here are not news.
            table.take_removed()


def _read_manifest(path):
    file = os.path.join(path, "manifest.json")
    try:
        with open(file) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{file}: unreadable manifest: {error}") from error
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{file}: format {manifest.get('format')!r}, expected {FORMAT}")
    return manifest


def _read_file(path, info):
    file = os.path.join(path, info["file"])
    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as error:
        raise CheckpointError(f"{file}: cannot read: {error}") from error
    if len(data) != info["bytes"] or zlib.crc32(data) != info["crc32"]:
        raise CheckpointError(f"{file}: size or CRC mismatch (corrupt or truncated file)")
    return data


def _verify(path):
    manifest = _read_manifest(path)
    for entry in manifest["tables"].values():
        infos = list(entry["files"]) + [entry["filter"]] + (
            [entry["removed"]] if "removed" in entry else [])
        for info in infos:
            _read_file(path, info)
