"""Collisionless table vs collision hashing (the paper's Fig. 7).

The same DeepFM, the same HashEmbedding tables and optimizers, trained on
the same split with the same seed; the only difference between the arms is
the ids the tables see: raw ids (``exact``: a collisionless table), or ids
first hashed with MD5 into a smaller id space sized to give a stated
collision rate (the share of distinct ids whose bucket holds another id,
measured on the dataset's ids): the paper's MovieLens rates (users 7.73%,
movies 2.86%) and 10%, 25%, 50% for every field. Test AUC after every epoch.
"""

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from experiments import data as datasets
from experiments.models import deepfm
from experiments.stats import auc

EXACT = "exact"
#: arm name -> collision rate per field (None: raw ids).
DEFAULT_ARMS = {EXACT: None,
                "paper rates": {"user_id": 0.0773, "item_id": 0.0286},
                "10%": 0.10, "25%": 0.25, "50%": 0.50}
FIELDS = ("user_id", "item_id")


@dataclass
class CollisionSetup:
    """One dataset of the experiment: ``make(seed)`` returns (train, test)
    dicts of ``user_id``, ``item_id``, ``label``."""

    name: str
    make: object
    epochs: int = 5
    batch_size: int = 256
    dim: int = 16
    learning_rate: float = 0.05
    dense_learning_rate: float = 0.002
    arms: dict = None

    def arm_rates(self):
        return self.arms or DEFAULT_ARMS


def ml100k_split(test_fraction=0.2):
    """``make`` of ml-100k: a seeded random split of the ratings."""
    examples = datasets.ml100k_examples()

    def make(seed):
        return datasets.random_split(examples, test_fraction, seed)
    return make


def zipf_split(examples, test_fraction=0.1, **options):
    """``make`` of the synthetic Zipf dataset (a new world per seed)."""

    def make(seed):
        return datasets.random_split(datasets.zipf_latent(seed, examples, **options),
                                     test_fraction, seed)
    return make


def _rates_per_field(rate):
    return rate if isinstance(rate, dict) else {field: rate for field in FIELDS}


def hashed_arm(train, test, rate):
    """(train, test, measured rates): ids hashed into buckets sized for
    ``rate`` (a float, or per field) over the ids of both parts."""
    train, test = dict(train), dict(test)
    measured = {}
    for field, target in _rates_per_field(rate).items():
        everything = np.concatenate([train[field], test[field]])
        buckets, measured[field] = datasets.buckets_for_collision_rate(everything, target)
        train[field] = datasets.hash_ids(train[field], buckets)
        test[field] = datasets.hash_ids(test[field], buckets)
    return train, test, measured


def train_arm(setup, train, test, seed):
    """Trains a fresh model; returns the test AUC after each epoch."""
    tf.keras.backend.clear_session()
    model = deepfm(list(FIELDS), dim=setup.dim, seed=seed, learning_rate=setup.learning_rate,
                   dense_learning_rate=setup.dense_learning_rate, timestamp=False)
    x = {field: train[field] for field in FIELDS}
    test_x = {field: test[field] for field in FIELDS}
    shuffled = tf.data.Dataset.from_tensor_slices((x, train["label"])).shuffle(
        len(train["label"]), seed=seed).batch(setup.batch_size)
    per_epoch = []
    for _ in range(setup.epochs):
        model.fit(shuffled, epochs=1, verbose=0, shuffle=False)  # shuffled above
        scores = model.predict(test_x, batch_size=8192, verbose=0).ravel()
        per_epoch.append(auc(test["label"], scores))
    return per_epoch


def run_seed(setup, seed, verbose=False):
    """Every arm on one seed: ``{arm: {"auc_per_epoch": [...], "rates": {...}}}``."""
    train, test = setup.make(seed)
    results = {}
    for arm, rate in setup.arm_rates().items():
        if rate is None:
            arm_train, arm_test, measured = train, test, {field: 0.0 for field in FIELDS}
        else:
            arm_train, arm_test, measured = hashed_arm(train, test, rate)
        per_epoch = train_arm(setup, arm_train, arm_test, seed)
        results[arm] = {"auc_per_epoch": per_epoch, "rates": measured}
        if verbose:
            rates = ", ".join(f"{f} {r:.2%}" for f, r in measured.items())
            print(f"  {setup.name} seed {seed} {arm} ({rates}): AUC per epoch "
                  + " ".join(f"{a:.4f}" for a in per_epoch), flush=True)
    return results
