"""The CRC that JSON state files (checkpoint manifests, joiner snapshots)
carry of themselves, so a reader can tell a corrupt file from a good one."""

import json
import zlib


def json_crc(document):
    """CRC-32 of `document`'s canonical JSON (sorted keys), leaving out its
    own ``crc32`` field: store it as ``document["crc32"]`` and compare again
    after reading."""
    body = {key: value for key, value in document.items() if key != "crc32"}
    return zlib.crc32(json.dumps(body, sort_keys=True).encode())
