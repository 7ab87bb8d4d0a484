"""Sparse checkpoints: table rows on disk, as full snapshots and deltas.

A checkpoint is a directory ``sparse-<sequence>-<full|delta>`` holding, per
table, row files, the keys removed since the previous save (deltas), the
admission filter state, and ``manifest.json`` with every file's size and
CRC-32, the caller's metadata (the training worker stores its step and data
position there) and a CRC-32 of the manifest itself. It is written under a temporary name and renamed when
complete, so a directory with that name is always whole. A delta holds only
the rows changed since the previous save and the keys removed since; restore
= newest full + the deltas after it, in order. A corrupt or truncated file
raises CheckpointError naming it, and ``restore`` falls back to the previous
complete chain.

Row files are written by the process that holds the table
(``table.write_row_files``, the core's ``cc/table/row_file.cc``): with a
table sharded over parameter servers each server writes its own shard's
files, all shards at once, and only the manifest comes from the caller; the
directory must then be on a file system every task sees (as TensorFlow's own
distributed checkpoints need). The manifest names each file's shard. Restore
reads every file and routes rows by id, so it fits any shard count.

Memory: a table is written one block of ``chunk_rows`` rows at a time, so a
save holds at most one block beyond the table itself; restore reads one
block at a time.

Row file format (little-endian, no pickle; ``read_rows`` reads it): a
sequence of blocks, each
  header: magic b"MTSPROWS", u32 version (2), u32 dim, u32 state_dim, u64 rows
  then keys int64[rows], values float32[rows*dim], state float32[rows*state_dim],
  timestamps int64[rows], counts int64[rows].
"""

import json
import os
import re
import shutil
import struct
import zlib

import errno
import numpy as np
import tensorflow as tf

from monolith_tf import kill_points
from monolith_tf.json_crc import json_crc
from monolith_tf.schema import ROW_FIELD_DTYPES

FORMAT = "monolith_tf.sparse/2"
_MAGIC = b"MTSPROWS"
_VERSION = 2
_HEADER = struct.Struct("<8sIIIQ")
_NAME = re.compile(r"^sparse-(\d{8})-(full|delta)$")
# Block arrays in the core's row-field order: keys, values, state, timestamps, counts.
_FIELDS = tuple(ROW_FIELD_DTYPES.items())
_READ_BYTES = 1 << 22  # CRC checks read files in pieces of this size


class CheckpointError(ValueError):
    """A sparse checkpoint is missing, incomplete, corrupt or does not fit."""


class CheckpointSaveError(OSError):
    """A checkpoint (sparse or dense) could not be written, e.g. the disk is
    full; nothing of it was kept and the previous checkpoints are intact.
    ``errno`` is the failed write's when the OS gave one."""


def write_error_parts(error):
    """(errno, message) of a failed write, an OSError or TensorFlow's OpError
    (which has no errno: ENOSPC is read from its class or message, else EIO)."""
    message = (getattr(error, "message", None) or str(error)).strip()
    code = getattr(error, "errno", None)
    if not code and (isinstance(error, tf.errors.ResourceExhaustedError)
                     or "No space left" in message):
        code = errno.ENOSPC
    return code or errno.EIO, message


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


def iter_row_blocks(path):
    """Yields the blocks of a row file as dicts of numpy arrays (keys, values,
    state, timestamps, counts), reading one block at a time. Raises
    CheckpointError naming the file when it is truncated or foreign."""
    try:
        f = open(path, "rb")
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read: {error}") from error
    with f:
        while True:
            header = f.read(_HEADER.size)
            if not header:
                return
            if len(header) < _HEADER.size:
                raise CheckpointError(f"{path}: truncated block header")
            magic, version, dim, state_dim, n = _HEADER.unpack(header)
            if magic != _MAGIC or version != _VERSION:
                raise CheckpointError(f"{path}: not a monolith_tf row file (magic {magic!r}, "
                                      f"version {version}, expected {_VERSION})")
            block, widths = {}, {"values": dim, "state": state_dim}
            for name, dtype in _FIELDS:
                width = widths.get(name, 1)
                size = n * width * np.dtype(dtype).itemsize
                data = f.read(size)
                if len(data) != size:
                    raise CheckpointError(f"{path}: truncated block ({name}: {len(data)} of "
                                          f"{size} bytes)")
                array = np.frombuffer(data, dtype)
                block[name] = array.reshape(n, width) if name in widths else array
            yield block


def read_rows(path, expected_crc=None):
    """Reads a whole row file as one dict of numpy arrays; with
    ``expected_crc`` the file's CRC-32 is checked first. Raises
    CheckpointError naming the file when it is truncated, foreign or corrupt."""
    if expected_crc is not None:
        _check_crc(path, None, expected_crc)
    blocks = list(iter_row_blocks(path))
    if not blocks:
        raise CheckpointError(f"{path}: empty row file")
    return {name: np.concatenate([b[name] for b in blocks]) for name, _ in _FIELDS}


def _check_crc(path, expected_bytes, expected_crc):
    size, crc = 0, 0
    try:
        with open(path, "rb") as f:
            while piece := f.read(_READ_BYTES):
                size += len(piece)
                crc = zlib.crc32(piece, crc)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read: {error}") from error
    if (expected_bytes is not None and size != expected_bytes) or crc != expected_crc:
        raise CheckpointError(f"{path}: size or CRC mismatch (corrupt or truncated file)")


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
      chunk_rows: rows per exported block, which bounds the extra memory of a
        save (default: about ``block_bytes`` of rows).
      block_bytes: target bytes of one block when ``chunk_rows`` is None.
      file_bytes: a table's rows roll over to a new file past this size.
      keep_full: complete chains (a full save and its deltas) to keep.
    """

    def __init__(self, directory, tables, chunk_rows=None, block_bytes=16 << 20,
                 file_bytes=256 << 20, keep_full=2):
        bad = [name for name in tables if not re.match(r"^[A-Za-z0-9_.-]+$", name)]
        if bad:
            raise ValueError(f"table names must be [A-Za-z0-9_.-]+ (file names), got {bad}")
        if keep_full < 1:
            raise ValueError(f"keep_full must be >= 1, got {keep_full}")
        self.directory = directory
        self.tables = dict(tables)
        self.chunk_rows = chunk_rows
        self.block_bytes = int(block_bytes)
        self.file_bytes = int(file_bytes)
        self.keep_full = int(keep_full)
        self._base = None  # sequence of the full save the next delta builds on

    def save(self, full=False, metadata=None):
        """Writes a full snapshot (``full=True`` or no full one yet) or a delta
        of the rows changed since the previous save; returns its path.
        ``metadata`` (JSON-serializable) is stored in the manifest."""
        os.makedirs(self.directory, exist_ok=True)
        self.remove_partials()
        existing = list_checkpoints(self.directory)
        sequence = existing[-1][0] + 1 if existing else 1
        kind = "full" if full or self._base is None else "delta"
        final = os.path.join(self.directory, f"sparse-{sequence:08d}-{kind}")
        partial = os.path.join(self.directory, f".partial-{sequence:08d}-{kind}")
        try:
            os.makedirs(partial)
            manifest = {"format": FORMAT, "kind": kind, "sequence": sequence,
                        "base": sequence if kind == "full" else self._base,
                        "metadata": metadata or {}, "tables": {}}
            for name, table in self.tables.items():
                manifest["tables"][name] = self._save_table(partial, name, table, kind)
                kill_points.reached("sparse_save.table")
            manifest["crc32"] = json_crc(manifest)
            _fsync_write(os.path.join(partial, "manifest.json"),
                         [json.dumps(manifest, indent=1, sort_keys=True).encode()])
            kill_points.reached("sparse_save.manifest")
            os.rename(partial, final)
            _fsync_directory(self.directory)
            kill_points.reached("sparse_save.renamed")
        except (OSError, tf.errors.OpError) as error:
            shutil.rmtree(partial, ignore_errors=True)
            # The tables' change marks and removed keys went into the lost
            # files, so a delta on top of the last save would miss them: the
            # next save must be a full snapshot.
            self._base = None
            code, message = write_error_parts(error)
            if isinstance(error, OSError):  # an OpError's message names its file
                message = f"{error.strerror or error} writing {error.filename or partial}"
            raise CheckpointSaveError(
                code, f"sparse checkpoint {final} not saved ({message}); nothing of "
                f"it was kept, the previous checkpoints are intact and the next save is a "
                f"full snapshot") from error
        if kind == "full":
            self._base = sequence
            self._prune()
        return final

    def remove_partials(self):
        """Removes what interrupted saves left (``.partial-*``, whatever
        their sequence and kind); returns how many. One writer per
        directory, so none of them is a save in progress."""
        if not os.path.isdir(self.directory):
            return 0
        leftovers = [name for name in os.listdir(self.directory) if name.startswith(".partial-")]
        for name in leftovers:
            shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        return len(leftovers)

    def chain_of(self, path):
        """The restorable chain that ends with checkpoint ``path`` (the full
        one, then its deltas up to ``path``); [] if none does."""
        for chain in self.chains():
            if path in chain:
                return chain[:chain.index(path) + 1]
        return []

    def _rows_per_block(self, table):
        if self.chunk_rows:
            return int(self.chunk_rows)
        row_bytes = 8 * 3 + 4 * (table.dim + table.state_dim)
        return max(1024, self.block_bytes // row_bytes)

    def _save_table(self, partial, name, table, kind):
        delta = kind == "delta"
        if table.get_config().get("evict_on_save"):
            table.evict_expired()
        removed = table.take_removed().numpy()  # starts the record on a full save
        files = table.write_row_files(os.path.join(partial, name), self._rows_per_block(table),
                                      self.file_bytes, only_dirty=delta, clear_dirty=True)
        entry = {"dim": table.dim, "state_dim": table.state_dim, "config": table.get_config(),
                 "files": files}
        if any("shard" in info for info in files):
            entry["shards"] = table.num_shards
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
                try:
                    base = read_manifest(later_path).get("base")
                except CheckpointError:
                    break  # a corrupt delta ends its chain; restore falls back before it
                if base != seq:
                    break
                chain.append(later_path)
            chains.append(chain)
        return chains[::-1]

    def restore(self, upto=None, discard_newer=False):
        """Restores the newest complete chain; falls back to the checkpoints
        before a corrupt delta, or to older chains when a full one is corrupt. Returns the last checkpoint path applied, or None
        when the directory holds no checkpoint. Raises CheckpointError when
        every chain fails (the first error names its file).

        ``upto``: restore the chain ending at this checkpoint path instead
        (no fallback). ``discard_newer``: delete the checkpoints after the one
        restored, so later deltas build on the restored state, not on a
        history that was rolled back.
        """
        if not os.path.isdir(self.directory):
            raise CheckpointError(f"{self.directory}: no such checkpoint directory")
        chains = self.chains()
        if upto is not None:
            upto = os.path.normpath(upto)
            matching = [chain[:[os.path.normpath(p) for p in chain].index(upto) + 1]
                        for chain in chains if upto in map(os.path.normpath, chain)]
            if not matching:
                raise CheckpointError(f"{upto}: not a complete sparse checkpoint in "
                                      f"{self.directory}")
            chains = matching
        errors = []
        for chain in chains:
            # All files first: a bad file changes no table. A bad delta
            # shortens the chain to the checkpoints before it (an older but
            # whole state); with ``upto``, that exact checkpoint or an error.
            good = 0
            for path in chain:
                try:
                    _verify(path)
                except CheckpointError as error:
                    errors.append(error)
                    break
                good += 1
            if good == 0 or (upto is not None and good < len(chain)):
                continue
            chain = chain[:good]
            try:
                for position, path in enumerate(chain):
                    self._apply(path, full=position == 0)
            except CheckpointError as error:
                errors.append(error)
                continue
            self._base = int(read_manifest(chain[0])["sequence"])
            if discard_newer:
                last = int(read_manifest(chain[-1])["sequence"])
                for seq, _, path in list_checkpoints(self.directory):
                    if seq > last:
                        shutil.rmtree(path)
            return chain[-1]
        if errors:
            raise CheckpointError(f"no restorable sparse checkpoint: {errors[0]}")
        return None

    def _apply(self, path, full):
        manifest = read_manifest(path)
        for name, table in self.tables.items():
            entry = manifest["tables"].get(name)
            if entry is None:
                raise CheckpointError(
                    f"{path}: has no table {name!r} (it has {sorted(manifest['tables'])}); "
                    "table names come from layer names, so give HashEmbedding layers "
                    "explicit names (auto names like 'hash_embedding_1' depend on how many "
                    "were built before)")
            if (entry["dim"], entry["state_dim"]) != (table.dim, table.state_dim):
                raise CheckpointError(
                    f"{path}: table {name!r} has dim {entry['dim']} and state_dim "
                    f"{entry['state_dim']}, the model's has dim {table.dim} and state_dim "
                    f"{table.state_dim}")
            clear = full
            for info in entry["files"]:
                for rows in iter_row_blocks(os.path.join(path, info["file"])):
                    table.import_rows(**rows, clear=clear)
                    clear = False
            if "removed" in entry:
                removed = np.frombuffer(_read_file(path, entry["removed"]), np.int64)
                if len(removed):
                    table.remove(removed)
            state = np.frombuffer(_read_file(path, entry["filter"]), np.uint8)
            table.restore_filter_state(state, entry["now"])
            # Imported rows come in clean; removals made here are not news.
            table.take_removed()


def _fsync_directory(directory):
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(path):
    """The manifest (dict) of the checkpoint directory ``path``; raises
    CheckpointError when it is missing, unreadable or of another format."""
    file = os.path.join(path, "manifest.json")
    try:
        with open(file) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{file}: unreadable manifest: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise CheckpointError(f"{file}: format {found!r}, expected {FORMAT}")
    # Manifests written before the field existed have no CRC of their own.
    if "crc32" in manifest and manifest.pop("crc32") != json_crc(manifest):
        raise CheckpointError(f"{file}: CRC mismatch (a corrupt manifest)")
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
    manifest = read_manifest(path)
    for entry in manifest["tables"].values():
        infos = list(entry["files"]) + [entry["filter"]] + (
            [entry["removed"]] if "removed" in entry else [])
        for info in infos:
            try:
                _check_crc(os.path.join(path, info["file"]), info["bytes"], info["crc32"])
            except CheckpointError as error:
                if "shard" not in info:
                    raise
                raise CheckpointError(
                    f"{error}; it holds shard {info['shard']} of {entry.get('shards', '?')}, "
                    "written by the task that held that shard (the checkpoint directory "
                    "must be on a file system every task and the restoring process "
                    "share)") from error
