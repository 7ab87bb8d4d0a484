"""The embedded backend of the log interface (``monolith_tf.streaming.log``):
a directory on disk, the default when no Kafka is configured.

Embedded log layout and durability:
  ``<dir>/topics/<topic>/meta.json``      partition count
  ``<dir>/topics/<topic>/<p>.log``        append-only frames:
      magic b"MTLR", u32 key length, u32 value length, i64 timestamp (ms),
      u32 CRC-32 of (key, value), key bytes, value bytes (little-endian);
      value length 0xFFFFFFFF marks a null value (a tombstone: no value bytes)
  ``<dir>/groups/<group>/<topic>.<p>``    committed offset, written atomically
Producers in any number of processes append under an exclusive ``flock`` of
the partition file; a frame torn by a crashed producer is cut off by the next
producer before it appends, and readers wait at an incomplete frame. fsync
policy: ``fsync="flush"`` (default) makes records durable when the producer's
``flush()`` returns; ``"always"`` after every ``produce``; ``"never"`` leaves
it to the OS. Commits are fsynced. Consumers of one group in several
processes split partitions statically (``assignment=(member, members)``:
partition p goes to member p % members); there is no rebalancing.
"""

import fcntl
import json
import os
import struct
import time
import zlib

from monolith_tf.streaming.log import (LogError, PartitionRouter, Record, assigned_partitions,
                                       check_name)

_FRAME = struct.Struct("<4sIIqI")
_MAGIC = b"MTLR"
_NULL_LENGTH = 0xFFFFFFFF  # value length of a tombstone
FSYNC_POLICIES = ("flush", "always", "never")


def _write_atomically(path, data):
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as error:
        try:
            os.remove(temporary)
        except OSError:
            pass
        raise LogError(f"{path}: not written ({error.strerror or error}); "
                       f"the previous contents are intact") from error


def _read_frame(f, position):
    """(record fields, next position) of the frame at ``position``, or None
    when it is incomplete (being written, or torn). Raises LogError for a
    complete frame that is corrupt."""
    f.seek(position)
    header = f.read(_FRAME.size)
    if len(header) < _FRAME.size:
        return None
    magic, key_length, value_length, timestamp, crc = _FRAME.unpack(header)
    if magic != _MAGIC:
        raise LogError(f"{f.name}: bad frame at byte {position}")
    tombstone = value_length == _NULL_LENGTH
    body_length = key_length + (0 if tombstone else value_length)
    body = f.read(body_length)
    if len(body) < body_length:
        return None
    if zlib.crc32(body) != crc:
        raise LogError(f"{f.name}: CRC mismatch in the frame at byte {position}")
    key = body[:key_length] if key_length else None
    value = None if tombstone else body[key_length:]
    return (key, value, timestamp), position + _FRAME.size + len(body)


class EmbeddedLog:
    """The log in a directory (see module doc); safe for several producer and
    consumer processes on one machine."""

    def __init__(self, path, fsync="flush"):
        if fsync not in FSYNC_POLICIES:
            raise LogError(f"fsync must be one of {FSYNC_POLICIES}, got {fsync!r}")
        self.path = path
        self.fsync = fsync
        os.makedirs(os.path.join(path, "topics"), exist_ok=True)
        os.makedirs(os.path.join(path, "groups"), exist_ok=True)

    def create_topic(self, name, partitions=1):
        """Creates ``name`` with ``partitions`` partitions; an existing topic
        must have the same count."""
        check_name(name, "topic name")
        if not isinstance(partitions, int) or partitions < 1:
            raise LogError(f"partitions must be a positive int, got {partitions!r}")
        directory = os.path.join(self.path, "topics", name)
        os.makedirs(directory, exist_ok=True)
        meta = os.path.join(directory, "meta.json")
        with open(os.path.join(directory, ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if os.path.exists(meta):
                existing = self.partitions(name)
                if existing != partitions:
                    raise LogError(f"topic {name!r} exists with {existing} partitions, "
                                   f"not {partitions}")
                return
            for partition in range(partitions):
                open(os.path.join(directory, f"{partition}.log"), "ab").close()
            _write_atomically(meta, json.dumps({"partitions": partitions}).encode())

    def topics(self):
        """``{topic: partitions}`` of the existing topics."""
        root = os.path.join(self.path, "topics")
        return {name: self.partitions(name) for name in sorted(os.listdir(root))
                if os.path.exists(os.path.join(root, name, "meta.json"))}

    def partitions(self, topic):
        """Partition count of ``topic``; LogError if it does not exist."""
        try:
            with open(os.path.join(self.path, "topics", topic, "meta.json")) as f:
                return int(json.load(f)["partitions"])
        except FileNotFoundError:
            raise LogError(f"unknown topic {topic!r} in {self.path}") from None

    def _partition_file(self, topic, partition):
        return os.path.join(self.path, "topics", topic, f"{partition}.log")

    def producer(self):
        """A producer writing to this log."""
        return EmbeddedProducer(self)

    def consumer(self, group, topics, assignment=None):
        """A consumer of ``topics`` in consumer group ``group``."""
        return EmbeddedConsumer(self, group, topics, assignment)

    def end_offsets(self, topic):
        """``{partition: offset after the last complete record}``."""
        ends = {}
        for partition in range(self.partitions(topic)):
            with open(self._partition_file(topic, partition), "rb") as f:
                offset, position = 0, 0
                while (frame := _read_frame(f, position)) is not None:
                    offset, position = offset + 1, frame[1]
            ends[partition] = offset
        return ends


class EmbeddedProducer:
    """Appends records to an EmbeddedLog (see module doc for durability)."""

    def __init__(self, log):
        self.log = log
        self._router = PartitionRouter(log)
        self._files = {}        # (topic, partition) -> open append file
        self._valid_end = {}    # (topic, partition) -> byte end of the last whole frame
        self._unsynced = set()

    def _file(self, topic, partition):
        key = (topic, partition)
        if key not in self._files:
            # Unbuffered: a frame is written with pwrite and a failed append
            # must leave no bytes behind in a buffer either.
            self._files[key] = open(self.log._partition_file(topic, partition), "r+b",
                                    buffering=0)
            self._valid_end[key] = 0
        return self._files[key]

    def produce(self, topic, value, key=None, timestamp_ms=None, partition=None):
        """Appends one record (``timestamp_ms`` defaults to now; ``value``
        None: a tombstone); returns its partition."""
        partition = self._router.route(topic, value, key, partition)
        timestamp_ms = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        body = (key or b"") + (value or b"")
        value_length = _NULL_LENGTH if value is None else len(value)
        frame = _FRAME.pack(_MAGIC, len(key or b""), value_length, timestamp_ms,
                            zlib.crc32(body)) + body
        f = self._file(topic, partition)
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            end = self._skip_whole_frames(f, (topic, partition))
            try:
                os.ftruncate(f.fileno(), end)  # cuts a frame torn by a crashed producer, if any
                written = 0
                while written < len(frame):
                    written += os.pwrite(f.fileno(), frame[written:], end + written)
                if self.log.fsync == "always":
                    os.fsync(f.fileno())
            except OSError as error:
                # A full disk: drop the part of the frame that was written, so
                # the partition ends with a whole frame and a retry appends
                # the record once.
                try:
                    os.ftruncate(f.fileno(), end)
                except OSError:
                    pass  # the next produce cuts it (as after a crash)
                raise LogError(f"{f.name}: record not appended ({error.strerror or error}); "
                               f"the partition still ends after its last whole record") from error
            self._valid_end[(topic, partition)] = end + len(frame)
            if self.log.fsync != "always":
                self._unsynced.add((topic, partition))
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
        return partition

    def _skip_whole_frames(self, f, key):
        position = self._valid_end[key]
        if os.fstat(f.fileno()).st_size == position:
            return position  # nobody else appended since our last write
        while (frame := _read_frame(f, position)) is not None:
            position = frame[1]
        self._valid_end[key] = position
        return position

    def flush(self):
        """Makes every record produced so far durable (fsync="flush"/"always")."""
        if self.log.fsync != "never":
            for key in sorted(self._unsynced):
                try:
                    os.fsync(self._files[key].fileno())
                except OSError as error:
                    raise LogError(f"{self._files[key].name}: records not made durable "
                                   f"({error.strerror or error})") from error
                self._unsynced.discard(key)
        self._unsynced.clear()

    def close(self):
        self.flush()
        for f in self._files.values():
            f.close()
        self._files.clear()


class EmbeddedConsumer:
    """Reads an EmbeddedLog's topics for one consumer group."""

    def __init__(self, log, group, topics, assignment=None):
        partitions = assigned_partitions(log, group, topics, assignment)
        self.log = log
        self.group = group
        self._directory = os.path.join(log.path, "groups", group)
        os.makedirs(self._directory, exist_ok=True)
        # (topic, partition) -> [next offset, byte position]
        self._positions = {key: self._load_committed(*key) for key in partitions}
        self._files = {}
        self._next_partition = 0
        self._caught_up = set()

    def _committed_file(self, topic, partition):
        return os.path.join(self._directory, f"{topic}.{partition}")

    def _load_committed(self, topic, partition):
        try:
            with open(self._committed_file(topic, partition)) as f:
                state = json.load(f)
            return [int(state["offset"]), int(state["position"])]
        except FileNotFoundError:
            return [0, 0]

    def assignment(self):
        """The (topic, partition) pairs this consumer reads."""
        return sorted(self._positions)

    def poll(self, max_records=500, timeout=1.0):
        """Up to ``max_records`` records, waiting up to ``timeout`` seconds
        for the first; partitions are read in turn."""
        deadline = time.monotonic() + timeout
        while True:
            records = self._read(max_records)
            if records or time.monotonic() >= deadline:
                return records
            time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))

    def _read(self, max_records):
        records = []
        keys = sorted(self._positions)
        for index in range(len(keys)):
            topic, partition = keys[(self._next_partition + index) % len(keys)]
            f = self._files.get((topic, partition))
            if f is None:
                f = self._files[(topic, partition)] = open(
                    self.log._partition_file(topic, partition), "rb")
            state = self._positions[(topic, partition)]
            self._caught_up.discard((topic, partition))
            while len(records) < max_records:
                frame = _read_frame(f, state[1])
                if frame is None:
                    self._caught_up.add((topic, partition))
                    break
                (key, value, timestamp), state[1] = frame
                records.append(Record(topic, partition, state[0], key, value, timestamp))
                state[0] += 1
            if len(records) >= max_records:
                break
        self._next_partition += 1
        return records

    def positions(self):
        """``{(topic, partition): next offset to read}``."""
        return {key: state[0] for key, state in self._positions.items()}

    def caught_up(self):
        """The (topic, partition) pairs whose every record was returned as of
        the last poll (used for event-time watermarks)."""
        return set(self._caught_up)

    def commit(self):
        """Stores the positions after every record returned so far, durably."""
        for (topic, partition), (offset, position) in self._positions.items():
            _write_atomically(self._committed_file(topic, partition),
                              json.dumps({"offset": offset, "position": position}).encode())

    def committed(self):
        """``{(topic, partition): committed offset}`` (0 when none)."""
        return {key: self._load_committed(*key)[0] for key in self._positions}

    def seek(self, topic, partition, offset):
        """Reads ``(topic, partition)`` from ``offset`` next."""
        if (topic, partition) not in self._positions:
            raise LogError(f"{topic}[{partition}] is not assigned to this consumer")
        position = 0
        with open(self.log._partition_file(topic, partition), "rb") as f:
            for _ in range(offset):
                frame = _read_frame(f, position)
                if frame is None:
                    raise LogError(f"{topic}[{partition}] has no offset {offset}")
                position = frame[1]
        self._positions[(topic, partition)] = [offset, position]

    def close(self):
        for f in self._files.values():
            f.close()
        self._files.clear()
