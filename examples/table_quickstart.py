"""Quickstart: train a click model whose id embeddings live in a HashTable.

Synthetic traffic: a click's log-odds are a user bias plus an item bias plus
an interaction (the user's hidden taste times the item's hidden polarity).
Ids are sparse 64-bit numbers, so no vocabulary is built. Embeddings train in
place with the table's own Adagrad; the dense head trains with a Keras
optimizer. Then the script checkpoints, exports a SavedModel, reloads it and
serves fresh traffic, checking it beats the best constant guess.

    python examples/table_quickstart.py [--steps 400]
"""

import argparse
import os
import tempfile
import time

import numpy as np

import monolith_tf as mt
from monolith_tf.quiet_start import import_tensorflow

tf = import_tensorflow()  # without its start-up lines (set TF_CPP_MIN_LOG_LEVEL to see them)


def synthetic_batches(rng, batch_size):
    users = rng.integers(0, 2**62, size=5000)
    items = rng.integers(0, 2**62, size=2000)
    user_bias, item_bias = rng.normal(0, 1, len(users)), rng.normal(0, 1, len(items))
    taste, polarity = rng.choice([-1.0, 1.0], len(users)), rng.choice([-1.0, 1.0], len(items))
    while True:
        u = rng.integers(0, len(users), size=batch_size)
        i = rng.integers(0, len(items), size=batch_size)
        log_odds = user_bias[u] + item_bias[i] + taste[u] * polarity[i]
        label = (rng.random(batch_size) < 1 / (1 + np.exp(-log_odds))).astype(np.float32)
        yield users[u], items[i], label


class ClickModel(tf.Module):
    """Linear terms over both embeddings plus their dot product; the dense
    head is trained by a Keras optimizer, the embeddings by their tables."""

    def __init__(self, dim=8):
        super().__init__()
        self.users = mt.HashTable(dim, initializer="truncated_normal(stddev=0.1)",
                                  optimizer="adagrad(initial_accumulator=0.000001)",
                                  name="users")
        self.items = mt.HashTable(dim, initializer="truncated_normal(stddev=0.1)",
                                  optimizer="adagrad(initial_accumulator=0.000001)",
                                  name="items")
        self.weights = tf.Variable(tf.fill([2 * dim, 1], 0.1))
        self.bias = tf.Variable(0.0)

    def logits(self, user_rows, item_rows):
        linear = tf.matmul(tf.concat([user_rows, item_rows], -1), self.weights)
        return tf.squeeze(linear, -1) + tf.reduce_sum(user_rows * item_rows, -1) + self.bias

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)] * 2)
    def serve(self, user_ids, item_ids):
        """Click probability; unseen ids read as zeros and are not inserted."""
        return tf.sigmoid(self.logits(self.users.lookup(user_ids), self.items.lookup(item_ids)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()

    model = ClickModel()
    dense_optimizer = tf.keras.optimizers.Adam(0.01)
    dense_variables = [model.weights, model.bias]

    @tf.function
    def train_step(user_ids, item_ids, labels, now):
        user_rows = model.users.lookup(user_ids, training=True)
        item_rows = model.items.lookup(item_ids, training=True)
        with tf.GradientTape() as tape:
            tape.watch([user_rows, item_rows])
            logits = model.logits(user_rows, item_rows)
            loss = tf.reduce_mean(
                tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))
        grads = tape.gradient(loss, [user_rows, item_rows] + dense_variables)
        model.users.apply_gradients(user_ids, grads[0], 0.02, timestamps=now)
        model.items.apply_gradients(item_ids, grads[1], 0.02, timestamps=now)
        dense_optimizer.apply_gradients(zip(grads[2:], dense_variables))
        accuracy = tf.reduce_mean(tf.cast((logits > 0) == (labels > 0.5), tf.float32))
        return loss, accuracy

    batches = synthetic_batches(np.random.default_rng(0), args.batch_size)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        users, items, labels = next(batches)
        loss, accuracy = train_step(tf.constant(users), tf.constant(items), tf.constant(labels),
                                    tf.constant(1_700_000_000 + step, tf.int64))
        if step % 50 == 0 or step == 1:
            print(f"step {step:4d}  loss {float(loss):.4f}  accuracy {float(accuracy):.3f}  "
                  f"rows: users {int(model.users.size())} items {int(model.items.size())}")
    elapsed = time.perf_counter() - start
    print(f"trained {args.steps} steps in {elapsed:.1f}s "
          f"({args.steps * args.batch_size / elapsed:,.0f} examples/s)")

    workdir = tempfile.mkdtemp(prefix="monolith_quickstart_")
    checkpoint_path = tf.train.Checkpoint(model=model).save(os.path.join(workdir, "ckpt"))
    print("checkpoint:", checkpoint_path)
    export_dir = os.path.join(workdir, "saved_model")
    tf.saved_model.save(model, export_dir, signatures={"serving_default": model.serve})
    reloaded = tf.saved_model.load(export_dir)
    users, items, labels = next(batches)
    probability = reloaded.serve(tf.constant(users), tf.constant(items)).numpy()
    served_accuracy = float(np.mean((probability > 0.5) == (labels > 0.5)))
    constant_guess = float(max(labels.mean(), 1 - labels.mean()))
    print(f"SavedModel at {export_dir}: served accuracy on fresh traffic {served_accuracy:.3f} "
          f"(best constant guess {constant_guess:.3f})")
    if served_accuracy < constant_guess + 0.05:
        raise SystemExit("the quickstart model did not learn the synthetic task")


if __name__ == "__main__":
    main()
