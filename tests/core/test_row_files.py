"""The core's sparse-checkpoint row-file writer (cc/table/row_file.cc), read
back by an independent numpy reader of the documented format, with CRCs
checked against zlib."""

import errno
import os
import struct
import zlib

import numpy as np
import pytest

from monolith_tf import _core

HEADER = struct.Struct("<8sIIIQ")


def read_blocks(path):
    """The documented format, decoded without the package's reader."""
    data = open(path, "rb").read()
    blocks, offset = [], 0
    while offset < len(data):
        magic, version, dim, state_dim, rows = HEADER.unpack_from(data, offset)
        assert (magic, version) == (b"MTSPROWS", 2)
        offset += HEADER.size
        block = {}
        for name, dtype, width in (("keys", np.int64, 1), ("values", np.float32, dim),
                                   ("state", np.float32, state_dim),
                                   ("timestamps", np.int64, 1), ("counts", np.int64, 1)):
            count = rows * width
            block[name] = np.frombuffer(data, dtype, count, offset).reshape(
                (rows, width) if name in ("values", "state") else (rows,))
            offset += count * np.dtype(dtype).itemsize
        blocks.append(block)
    return blocks


def concat(blocks):
    return {name: np.concatenate([b[name] for b in blocks]) for name in blocks[0]}


def sorted_rows(rows):
    order = np.argsort(rows["keys"])
    return {name: values[order] for name, values in rows.items()}


def trained_table(n=5000, dim=8):
    table = _core.EmbeddingTable(dim=dim, optimizer="adagrad", seed=3)
    keys = np.arange(n, dtype=np.int64) * 7919 - 10**6
    table.apply_gradients(keys, np.ones((n, dim), np.float32), 0.1,
                          timestamps=np.arange(n, dtype=np.int64) + 100)
    return table, keys


@pytest.mark.parametrize("data", [b"", b"a", bytes(range(256)) * 5, os.urandom(4099)])
def test_crc32_equals_zlib_and_continues(data):
    assert _core.crc32(data) == zlib.crc32(data)
    assert _core.crc32(data[7:], _core.crc32(data[:7])) == zlib.crc32(data)


def test_rows_round_trip_in_blocks_and_files_with_sizes_and_crcs(tmp_path):
    table, keys = trained_table()
    files = table.write_row_files(str(tmp_path / "emb.rows"), rows_per_block=700,
                                  file_bytes=100_000)
    assert [os.path.basename(f["path"]) for f in files] == [
        f"emb.rows.{i:05d}" for i in range(len(files))]
    assert len(files) > 2  # rolled over past file_bytes
    blocks = []
    for info in files:
        data = open(info["path"], "rb").read()
        assert (info["bytes"], info["crc32"]) == (len(data), zlib.crc32(data))
        file_blocks = read_blocks(info["path"])
        assert info["rows"] == sum(len(b["keys"]) for b in file_blocks)
        stamps = np.concatenate([b["timestamps"] for b in file_blocks])
        assert (info["oldest_update"], info["newest_update"]) == (stamps.min(), stamps.max())
        assert all(len(b["keys"]) <= 700 * 2 for b in file_blocks)  # block-bounded memory
        blocks += file_blocks
    written = sorted_rows(concat(blocks))
    expected = sorted_rows(table.export())
    assert len(written["keys"]) == len(keys)
    for name in expected:
        np.testing.assert_array_equal(written[name], expected[name], err_msg=name)


def test_deltas_write_the_changed_rows_and_empty_tables_one_file(tmp_path):
    table, keys = trained_table(n=3000)
    table.write_row_files(str(tmp_path / "full"), clear_dirty=True)
    changed = keys[::10]
    table.apply_gradients(changed, np.ones((len(changed), 8), np.float32), 0.1, timestamps=9999)
    files = table.write_row_files(str(tmp_path / "delta"), rows_per_block=256,
                                  only_dirty=True, clear_dirty=True)
    assert len(files) == 1
    delta = concat(read_blocks(files[0]["path"]))
    np.testing.assert_array_equal(np.sort(delta["keys"]), np.sort(changed))
    assert files[0]["oldest_update"] == files[0]["newest_update"] == 9999
    # Nothing changed since: one file with one empty block.
    again = table.write_row_files(str(tmp_path / "none"), only_dirty=True, clear_dirty=True)
    assert [f["rows"] for f in again] == [0]
    assert [len(b["keys"]) for b in read_blocks(again[0]["path"])] == [0]
    empty = _core.EmbeddingTable(dim=4).write_row_files(str(tmp_path / "empty"))
    assert [f["rows"] for f in empty] == [0]


def test_failed_writes_are_os_errors_and_leave_no_files(tmp_path):
    table, _ = trained_table(n=100)
    with pytest.raises(OSError) as raised:
        table.write_row_files(str(tmp_path / "missing-dir" / "emb"))
    assert raised.value.errno == errno.ENOENT
    assert "missing-dir/emb.00000" in str(raised.value)
    # /dev/full fails every write with ENOSPC; a file there cannot be created
    # anew, so write through a symlink to it.
    if os.path.exists("/dev/full"):
        os.symlink("/dev/full", tmp_path / "full.00000")
        with pytest.raises(OSError) as raised:
            table.write_row_files(str(tmp_path / "full"))
        assert raised.value.errno == errno.ENOSPC
        assert not os.path.lexists(tmp_path / "full.00000")  # removed after the failure
    with pytest.raises(ValueError, match="rows_per_block and file_bytes must be >= 1"):
        table.write_row_files(str(tmp_path / "x"), rows_per_block=0)
    assert sorted(os.listdir(tmp_path)) == []
