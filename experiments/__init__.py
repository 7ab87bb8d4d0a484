"""The Monolith paper's claims, rerun here with numbers and their spread.

``python -m experiments all`` (or ``make experiments``) runs:

- ``collisions``: a collisionless table against MD5 collision hashing at
  stated collision rates (``collisions.py``), on ml-100k and on a synthetic
  Zipf dataset over >= 1M ids;
- ``online``: batch training against online training synced to a serving
  replica every D seconds of data time, with progressive validation
  (``online.py``), on a drifting Criteo-like stream and on time-ordered
  ml-100k;
- ``memory``: occurrence thresholds and expiry against rows, memory and
  AUC (``memory.py``);

each over several seeds, and writes ``docs/experiments.md`` (tables of mean
± std, a verdict per claim), ``docs/experiments.json`` (every per-seed
number) and PNG plots beside them, from scratch. ``--quick`` runs the
reduced version the test suite runs.
"""

from experiments.collisions import CollisionSetup, ml100k_split, zipf_split
from experiments.data import DriftConfig

EXPERIMENTS = ("collisions", "online", "memory")


def collision_setups(quick=False):
    """The datasets of the collision experiment (full or reduced)."""
    synthetic = {"exponent": 1.1, "items": 10_000, "item_exponent": 0.5, "bias": 1.0,
                 "interaction": 1.5}
    if quick:
        return [CollisionSetup("ml-100k", ml100k_split(), epochs=2,
                               arms={"exact": None, "50%": 0.5}),
                CollisionSetup("synthetic Zipf (small)", zipf_split(200_000, **synthetic),
                               epochs=1, batch_size=1024, dim=8,
                               arms={"exact": None, "50%": 0.5})]
    long_tail = {"exponent": 1.2, "bias": 1.0, "interaction": 1.5}
    return [CollisionSetup("ml-100k", ml100k_split(), epochs=5),
            CollisionSetup("synthetic Zipf (1M-id user space, 10k items)",
                           zipf_split(1_000_000, **synthetic), epochs=2, batch_size=1024,
                           dim=8),
            # Both fields long-tailed: where collisions should hardly cost.
            CollisionSetup("synthetic Zipf long tail (1M users, 1M items)",
                           zipf_split(1_000_000, **long_tail), epochs=2, batch_size=1024,
                           dim=8, arms={"exact": None, "10%": 0.10, "50%": 0.50})]


def online_setups(quick=False):
    """The datasets of the online experiment (full or reduced)."""
    from experiments import data
    from experiments.online import OnlineSetup

    ml100k = data.ml100k_examples()
    ml100k_setup = OnlineSetup("ml-100k (time order)", ml100k, ["user_id", "item_id"],
                               batch_fraction=0.5, batch_size=256, dim=16,
                               intervals=(3600, 864000) if quick else (3600, 86400, 864000))
    config = DriftConfig(examples=60_000) if quick else DriftConfig()
    if quick:
        return [OnlineSetup("synthetic drifting stream (small)",
                            lambda seed: data.drifting_stream(seed, config),
                            data.categorical_names(config), data.dense_names(config),
                            batch_fraction=0.25, batch_size=1024, intervals=(600, 36000)),
                ml100k_setup]
    return [OnlineSetup("synthetic drifting stream (26 fields, 13 dense)",
                        lambda seed: data.drifting_stream(seed, config),
                        data.categorical_names(config), data.dense_names(config),
                        batch_fraction=0.25, batch_size=1024, intervals=(600, 3600, 36000)),
            ml100k_setup]
