"""GroupLens MovieLens ratings as tf.data, streamed line by line.

Formats (picked from the file name, or given as ``fmt``):
  ``u.data``      ml-100k: ``user<TAB>item<TAB>rating<TAB>timestamp``, no header
  ``ratings.dat`` ml-1m/10m: ``user::item::rating::timestamp``, no header
  ``ratings.csv`` ml-20m/25m: ``userId,movieId,rating,timestamp`` with a header

Each element is a dict: ``user_id`` and ``movie_id`` (int64, the raw ids:
no vocabulary is built), ``rating`` (float32) and ``timestamp`` (int64,
seconds). MovieLens files may not be redistributed, so none ship with this
repository: `make data` extracts ml-100k from the recbole wheel into
``data/ml-100k/u.data``.
"""

import os

import numpy as np

FORMATS = {"u.data": ("\t", 0), "ratings.dat": ("::", 0), "ratings.csv": (",", 1)}
DEFAULT_ML100K = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "data", "ml-100k", "u.data")


def _format_of(path, fmt):
    fmt = fmt or os.path.basename(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown MovieLens format {fmt!r}; expected one of {sorted(FORMATS)} "
                         "(name the file so, or pass fmt=)")
    return FORMATS[fmt]


def read_ratings(path, fmt=None):
    """Ratings of one GroupLens file as numpy arrays, in file order, without
    TensorFlow (the replay reads them so): ``{"user_id": int64,
    "movie_id": int64, "rating": float32, "timestamp": int64}``. Raises
    ValueError naming the line for a malformed one (wrong field count or a
    non-numeric field), FileNotFoundError for a missing file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; `make data` prepares ml-100k")
    separator, header_lines = _format_of(path, fmt)
    users, movies, ratings, times = [], [], [], []
    with open(path, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if number <= header_lines or not line.strip():
                continue
            fields = line.strip().split(separator)
            if len(fields) != 4:
                raise ValueError(f"{path}:{number}: expected 4 fields, got {len(fields)}")
            try:
                users.append(int(fields[0]))
                movies.append(int(fields[1]))
                ratings.append(float(fields[2]))
                times.append(int(fields[3]))
            except ValueError:
                raise ValueError(f"{path}:{number}: non-numeric field in {line.strip()!r}") \
                    from None
    return {"user_id": np.array(users, np.int64), "movie_id": np.array(movies, np.int64),
            "rating": np.array(ratings, np.float32), "timestamp": np.array(times, np.int64)}


def load_ratings(path, fmt=None):
    """Ratings of one GroupLens file as an unbatched ``tf.data.Dataset``.

    Malformed lines fail the pipeline with an InvalidArgumentError naming
    the problem (wrong field count or a non-numeric field).
    """
    import tensorflow as tf  # the tf.data reader; read_ratings needs none

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; `make data` prepares ml-100k")
    separator, header_lines = _format_of(path, fmt)

    def parse(line):
        fields = tf.strings.split(line, separator)
        # The check must run before any field is indexed, or a short line
        # fails on the slice instead, with a less helpful message.
        check = tf.debugging.assert_equal(tf.size(fields), 4,
                                          message=f"{path}: expected 4 fields")
        with tf.control_dependencies([check]):
            fields = tf.identity(fields)
        return {
            "user_id": tf.strings.to_number(fields[0], tf.int64),
            "movie_id": tf.strings.to_number(fields[1], tf.int64),
            "rating": tf.strings.to_number(fields[2], tf.float32),
            "timestamp": tf.strings.to_number(fields[3], tf.int64),
        }

    lines = tf.data.TextLineDataset(path).skip(header_lines)
    lines = lines.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
    return lines.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def ml100k(path=None):
    """ml-100k ratings (100,000) from ``data/ml-100k/u.data`` or ``path``."""
    return load_ratings(path or os.environ.get("MONOLITH_ML100K", DEFAULT_ML100K), "u.data")
