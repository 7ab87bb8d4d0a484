"""Datasets of the experiments, as dicts of numpy arrays (one row per example).

- ``ml100k_examples``: MovieLens 100k ratings in time order; label = liked
  (rating >= 4). Real data: the effects it shows are the ones users see.
- ``zipf_latent``: a large id space (>= 1M user and 1M item ids) drawn
  Zipf-distributed, labels from per-id latent vectors and biases; what a
  model can learn lives in the ids, so collisions must cost.
- ``drifting_stream``: a Criteo-like stream (26 categorical fields with
  Zipf ids, 13 dense features) in time order whose truth moves: users'
  preferences rotate with a period, new items are born at the head of the
  popularity curve and fade, so a model that stops learning goes stale.

All generators are seeded and vectorized; ids are scrambled 62-bit integers
(raw ids, as a production log holds them), never small dense indices.
Hashing for the collision experiment (``md5_digests``,
``buckets_for_collision_rate``) is MD5 of the decimal id, as in the paper.
"""

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from monolith_tf.datasets.movielens import DEFAULT_ML100K
from monolith_tf.streaming.replay import load_sorted_ratings

_ID_MASK = np.uint64((1 << 62) - 1)


def scramble(values, salt):
    """Distinct non-negative 62-bit ids from non-negative ints (a bijective
    mix, SplitMix64's finalizer, keyed by ``salt``)."""
    with np.errstate(over="ignore"):
        x = np.asarray(values, np.uint64) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x & _ID_MASK).astype(np.int64)


class ZipfSampler:
    """Ranks in ``[0, size)`` with P(rank r) proportional to (r + 1)^-exponent
    (any exponent > 0; numpy's own zipf needs > 1 and is unbounded)."""

    def __init__(self, size, exponent):
        weights = np.arange(1, size + 1, dtype=np.float64) ** -float(exponent)
        self.cdf = np.cumsum(weights)
        self.cdf /= self.cdf[-1]

    def sample(self, rng, n):
        return np.minimum(np.searchsorted(self.cdf, rng.random(n)), self.cdf.size - 1)


def ml100k_examples(path=None):
    """MovieLens 100k in time order (stable for ties): ``user_id``,
    ``item_id``, ``timestamp`` (int64 seconds) and ``label`` (float32, 1 for
    rating >= 4). Read by the replay's loader (any GroupLens format)."""
    path = path or os.environ.get("MONOLITH_ML100K", DEFAULT_ML100K)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; `make data` prepares ml-100k")
    users, movies, stars, times = load_sorted_ratings(path)
    return {"user_id": users.astype(np.int64), "item_id": movies.astype(np.int64),
            "timestamp": times.astype(np.int64), "label": (stars >= 4).astype(np.float32)}


def take(examples, index):
    """The examples at ``index`` (a slice, mask or index array)."""
    return {name: values[index] for name, values in examples.items()}


def random_split(examples, test_fraction, seed):
    """(train, test) of a seeded random permutation."""
    n = len(examples["label"])
    order = np.random.default_rng(seed).permutation(n)
    cut = n - int(n * test_fraction)
    return take(examples, order[:cut]), take(examples, order[cut:])


def _latent(rng, rows, dim):
    # Unit expected squared norm: a dot product of two has variance 1.
    return (rng.standard_normal((rows, dim)) / np.sqrt(np.sqrt(dim))).astype(np.float32)


def zipf_latent(seed, examples, users=1_000_000, items=1_000_000, exponent=1.0,
                item_exponent=None, dim=8, interaction=2.0, bias=0.5):
    """``examples`` (user, item) pairs: users Zipf(``exponent``) over
    ``users`` ids, items Zipf(``item_exponent``, default the same) over
    ``items`` ids; P(click) = sigmoid(interaction * <u, v> + b_u + b_v) with
    per-id latent vectors u, v (``dim``) and biases b ~ N(0, bias). Returns
    ``user_id``, ``item_id``, ``label``."""
    rng = np.random.default_rng(seed)
    user_rank = ZipfSampler(users, exponent).sample(rng, examples)
    item_rank = ZipfSampler(items, exponent if item_exponent is None else item_exponent
                            ).sample(rng, examples)
    user_vec, item_vec = _latent(rng, users, dim), _latent(rng, items, dim)
    user_bias = rng.normal(0, bias, users).astype(np.float32)
    item_bias = rng.normal(0, bias, items).astype(np.float32)
    logit = (interaction * np.einsum("ij,ij->i", user_vec[user_rank], item_vec[item_rank])
             + user_bias[user_rank] + item_bias[item_rank])
    label = (rng.random(examples) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return {"user_id": scramble(user_rank, seed * 2 + 1),
            "item_id": scramble(item_rank, seed * 2 + 2), "label": label}


@dataclass
class DriftConfig:
    """Shape of ``drifting_stream`` (data time in seconds)."""

    examples: int = 400_000
    days: float = 4.0
    users: int = 200_000
    items: int = 20_000             # items alive at once (popularity ranks)
    new_items_per_day: int = 500
    exponent: float = 1.05          # Zipf exponent of users and items
    period_days: float = 1.0        # users' preferences turn once per period
    categorical: int = 26           # C1 user, C2 item, C3.. context fields
    informative: int = 8            # context fields whose ids carry signal
    dense: int = 13
    dim: int = 8
    interaction: float = 1.5
    item_bias: float = 1.0
    user_bias: float = 0.8
    start_time: int = 1_600_000_000


def categorical_names(config):
    return [f"C{i + 1}" for i in range(config.categorical)]


def dense_names(config):
    return [f"I{i + 1}" for i in range(config.dense)]


def drifting_stream(seed, config=None):
    """A time-ordered click stream with known, moving truth (module doc).

    ``C1`` user (Zipf over ``users``), ``C2`` item: ranks Zipf over the
    ``items`` alive; new items are born at rank 0 at ``new_items_per_day``
    and sink as newer ones arrive. User u's preference at time t is
    cos(2 pi t / period + phi_u) a_u + sin(...) b_u, so it turns once per
    period, and so does the user's bias, beta_u cos(2 pi t / period + phi_u);
    P(click) = sigmoid(interaction * <pref, item vector> + item bias + user
    bias + context effects (``informative`` fields) + dense effects + c).
    ``C3..C26`` ids are Zipf over 100..100k; ``I1..I13`` standard normal,
    four of them informative. Returns the features, ``timestamp`` (int64
    seconds from ``start_time``) and ``label``."""
    c = config or DriftConfig()
    rng = np.random.default_rng(seed)
    n = c.examples
    seconds = c.days * 86400.0
    offset = np.sort(rng.random(n)) * seconds
    born = np.floor(offset / 86400.0 * c.new_items_per_day).astype(np.int64)
    total_items = c.items + int(c.days * c.new_items_per_day) + 1

    user_rank = ZipfSampler(c.users, c.exponent).sample(rng, n)
    item_rank = ZipfSampler(c.items, c.exponent).sample(rng, n)
    item = c.items + born - item_rank            # newest born item has rank 0
    user_a, user_b = _latent(rng, c.users, c.dim), _latent(rng, c.users, c.dim)
    phase = rng.random(c.users).astype(np.float32) * 2 * np.pi
    item_vec = _latent(rng, total_items, c.dim)
    item_bias = rng.normal(0, c.item_bias, total_items).astype(np.float32)
    user_bias = rng.normal(0, c.user_bias, c.users).astype(np.float32)
    angle = 2 * np.pi * offset / (c.period_days * 86400.0) + phase[user_rank]
    preference = (np.cos(angle)[:, None] * user_a[user_rank]
                  + np.sin(angle)[:, None] * user_b[user_rank])
    logit = (c.interaction * np.einsum("ij,ij->i", preference, item_vec[item])
             + item_bias[item] + user_bias[user_rank] * np.cos(angle) - 1.0)

    features = {"C1": scramble(user_rank, 1000 + seed), "C2": scramble(item, 2000 + seed)}
    for field in range(2, c.categorical):
        size = int(10 ** (2 + 3 * (field - 2) / max(1, c.categorical - 3)))
        ranks = ZipfSampler(size, 1.1).sample(rng, n)
        if field - 2 < c.informative:
            logit += rng.normal(0, 0.4, size).astype(np.float32)[ranks]
        features[f"C{field + 1}"] = scramble(ranks, 1000 * (field + 1) + seed)
    dense = rng.standard_normal((n, c.dense)).astype(np.float32)
    weights = np.zeros(c.dense, np.float32)
    weights[:4] = (0.5, -0.3, 0.2, 0.1)
    logit += dense @ weights
    for i, name in enumerate(dense_names(c)):
        features[name] = dense[:, i].copy()
    features["timestamp"] = (c.start_time + offset).astype(np.int64)
    features["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return features


def md5_digests(ids):
    """64-bit integers from the MD5 of each id's decimal string."""
    unique, inverse = np.unique(np.asarray(ids, np.int64), return_inverse=True)
    digests = np.fromiter(
        (int.from_bytes(hashlib.md5(str(int(i)).encode()).digest()[:8], "little") >> 1
         for i in unique), dtype=np.int64, count=unique.size)
    return digests[inverse]


def collision_rate(digests, buckets):
    """Fraction of the distinct ids (given by their digests) whose bucket
    (digest mod ``buckets``) holds another id too."""
    unique_digests = np.unique(digests)
    _, inverse, counts = np.unique(unique_digests % buckets, return_inverse=True,
                                   return_counts=True)
    return float((counts[inverse] > 1).mean())


def buckets_for_collision_rate(ids, rate):
    """(buckets, measured rate): the bucket count whose MD5 collision rate
    over the distinct ``ids`` comes closest to ``rate`` (bisection from the
    balls-in-bins estimate: rate = 1 - (1 - 1/B)^(n - 1))."""
    if not 0 < rate < 1:
        raise ValueError(f"collision rate must be in (0, 1), got {rate!r}")
    digests = np.unique(md5_digests(np.unique(ids)))
    n = digests.size
    low, high = max(1, int(n / 50)), int(n / -np.log1p(-rate) * 8) + 2
    best = None
    while low <= high:
        middle = (low + high) // 2
        measured = collision_rate(digests, middle)
        if best is None or abs(measured - rate) < abs(best[1] - rate):
            best = (middle, measured)
        if measured > rate:
            low = middle + 1
        else:
            high = middle - 1
    return best


def hash_ids(ids, buckets):
    """Ids replaced by their MD5 bucket (digest mod ``buckets``)."""
    return md5_digests(ids) % buckets
