"""Writes examples/movielens_quickstart.ipynb and examples/movielens_online.ipynb
(unexecuted) from the cells below, so the notebooks are reviewed as Python
and cannot drift into stale copies of library code: the quickstart imports
examples/movielens_model.py like the script; the online notebook runs the
library's replay, joiner, worker, sync publisher and replica.

    python tools/make_notebook.py
"""

import os

import nbformat

QUICKSTART_CELLS = [
    ("markdown", """# MovieLens 100k on raw ids with monolith_tf

A TFRS ranking model and a two-tower retrieval model whose user and movie
embeddings live in `HashEmbedding` tables: raw ids go in, no vocabulary is
built, new ids are inserted while training and unseen ids read as zeros at
serving time. Run `make data` first (it extracts ml-100k from the recbole
wheel; MovieLens may not be redistributed, so the repository has no copy)."""),
    ("code", """import os, sys
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # TFRS needs tf_keras
sys.path.insert(0, os.path.abspath("."))           # run from examples/
import movielens_model
# The test suite sets MONOLITH_NOTEBOOK_STEPS to run a few steps only.
max_steps = int(os.environ.get("MONOLITH_NOTEBOOK_STEPS", "0")) or None
epochs = 2 if max_steps else 3"""),
    ("code", """metrics, history = movielens_model.train_and_evaluate(
    epochs=epochs, max_steps=max_steps, verbose=0)
for name, value in metrics.items():
    print(f"{name:>24}: {value}")"""),
    ("markdown", "RMSE and AUC (rating >= 4) come from the ranking model, top-k accuracy "
                 "from the retrieval model, all on the held-out 20%."),
    ("code", """import matplotlib.pyplot as plt
from IPython.display import display
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(range(1, len(history["loss"]) + 1), history["loss"], marker="o")
ax.set_xlabel("epoch"); ax.set_ylabel("training MSE"); ax.set_title("Ranking loss")
fig.tight_layout()
display(fig)
plt.close(fig)"""),
]


ONLINE_CELLS = [
    ("markdown", """# Online training on MovieLens, step by step

The loop this project closes, on one machine, each step a real library piece
you would run as its own process in production:

1. **replay**: ml-100k ratings, in time order, become impressions (the feature
   log) and clicks (the action log);
2. **join**: the online joiner matches actions to impressions into labelled
   examples (the examples log);
3. **train**: the training worker learns from the examples log as it arrives;
4. **sync**: a sync publisher pushes touched rows and dense weights every hour
   of *data time* to a sync topic;
5. **serve**: a serving replica (model server + sync subscriber) applies them.

Every example is scored by the replica **before** the worker trains on it
(progressive validation), so the AUC below is what users would have been
served. Plots: progressive AUC over data time, table size, and how far the
replica's rows lag the trainer (in data time).

Run `make data` first (ml-100k is not redistributable; it is extracted locally)."""),
    ("code", """import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from monolith_tf.datasets.movielens import DEFAULT_ML100K
from experiments.models import deepfm
from experiments.online import window_aucs
from experiments.progressive import ProgressiveValidation, loopback_replica
from experiments.stats import auc
from monolith_tf.streaming import open_log
from monolith_tf.streaming.dataset import ExampleStream
from monolith_tf.streaming.joiner import Joiner, JoinerConfig
from monolith_tf.streaming.dataset import joined_feature_spec
from monolith_tf.streaming.replay import replay
from monolith_tf.step_task import StepTask
from monolith_tf.sync.publisher import SyncPublisher
from monolith_tf.training import TrainingWorker

MAX_RATINGS = int(os.environ.get("MONOLITH_NOTEBOOK_RATINGS", "40000"))
SYNC_EVERY_DATA_SECS = 3600          # one hour of data time between pushes
ACTIONS = ["rating", "like"]
work = tempfile.mkdtemp(prefix="movielens_online_")
log = open_log({"path": os.path.join(work, "log")})   # embedded; {"bootstrap.servers": ...} for Kafka
for topic in ("features", "actions", "examples", "dead_letter"):
    log.create_topic(topic, 1)
print("working in", work)"""),
    ("markdown", """## 1. Replay: ratings -> feature log and action log"""),
    ("code", """counts = replay(os.environ.get("MONOLITH_ML100K", DEFAULT_ML100K), log, negatives=1,
                max_ratings=MAX_RATINGS)
counts"""),
    ("markdown", """## 2. Join: actions + impressions -> labelled examples"""),
    ("code", """joiner = Joiner(log, JoinerConfig(ACTIONS, window=3600, allowed_lateness=600),
                os.path.join(work, "joiner"))
joiner.run(idle_timeout=2.0)
joiner.flush_all()
{k: joiner.counters[k] for k in ("emitted", "positives", "negatives_kept", "dead_letters")}"""),
    ("markdown", """## 3-5. Train from the examples log, sync every hour of data time, serve

The model is a DeepFM over raw user and movie ids (no vocabulary). The
replica starts from the base version the publisher exports when training
begins and then follows the sync stream."""),
    ("code", """class TableSize(StepTask):
    '''Step task: rows in the tables after every step, by data time.'''

    def __init__(self):
        self.points = []

    def after_step(self, worker):
        rows = sum(int(table.size()) for table in worker.tables.values())
        self.points.append((worker.data_time, rows))


model = deepfm(["user_id", "item_id"], dim=16, seed=0)
base_path = os.path.join(work, "models")
publisher = SyncPublisher(log, base_path, sparse_every_secs=None, dense_every_secs=None,
                          sparse_every_data_secs=SYNC_EVERY_DATA_SECS,
                          dense_every_data_secs=SYNC_EVERY_DATA_SECS, base_every_secs=10**9)
publisher.connect()
replica = loopback_replica(base_path, log).start()
stream = ExampleStream(log, joined_feature_spec(ACTIONS), batch_size=128, label="label/like",
                       idle_timeout=2.0, features=["user_id", "item_id", "timestamp"])
progressive = ProgressiveValidation(stream, replica)
table_size = TableSize()
worker = TrainingWorker(model, os.path.join(work, "trainer"), checkpoints=False, verbose=0,
                        tasks=[publisher, table_size])
try:
    summary = worker.train(progressive)
finally:
    replica.stop()
    publisher.close()
labels, scores, times = progressive.results()
print(f"trained {summary['steps']} steps on {summary['examples']:,} examples; "
      f"{publisher.totals['pushes']} row pushes ({publisher.totals['rows']:,} rows), "
      f"{publisher.totals['dense_pushes']} dense pushes")
print(f"progressive AUC over the whole stream: {auc(labels, scores):.4f}")"""),
    ("markdown", """## Progressive AUC, table size and sync lag over data time"""),
    ("code", """days = lambda seconds: (np.asarray(seconds, np.float64) - times.min()) / 86400.0
edges = np.linspace(times.min(), times.max() + 1, 15)
window = window_aucs(labels, scores, times, edges)
sizes = np.array(table_size.points, np.float64)
lags = np.array([(t, t - r) for t, r in progressive.lags() if r is not None], np.float64)

fig, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 3.4))
left.plot(days((edges[:-1] + edges[1:]) / 2), window, marker="o")
left.set(xlabel="days of data time", ylabel="progressive AUC (window)",
         title="served AUC, scored before training")
middle.plot(days(sizes[:, 0]), sizes[:, 1])
middle.set(xlabel="days of data time", ylabel="rows (users + movies)", title="table size")
right.plot(days(lags[:, 0]), lags[:, 1] / 3600.0, lw=0.8)
right.set(xlabel="days of data time", ylabel="hours of data time",
          title=f"replica lag (sync every {SYNC_EVERY_DATA_SECS // 3600} h)")
fig.tight_layout()
display(fig)
plt.close(fig)
print(f"median lag {np.median(lags[:, 1]) / 3600:.2f} h of data time; "
      f"p99 {np.percentile(lags[:, 1], 99) / 3600:.2f} h")"""),
    ("markdown", """The replica's lag saw-tooths between zero and about the sync interval (longer
where ratings are sparse in time). The full experiment, with batch training
as the baseline and three sync intervals over five seeds, is
`python -m experiments online` (results in `docs/experiments.md`)."""),
]

NOTEBOOKS = {"movielens_quickstart.ipynb": QUICKSTART_CELLS,
             "movielens_online.ipynb": ONLINE_CELLS}


def write(name, cells):
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    for number, (kind, source) in enumerate(cells):
        cell = (nbformat.v4.new_markdown_cell if kind == "markdown"
                else nbformat.v4.new_code_cell)(source)
        cell["id"] = f"cell-{number}"   # stable: regenerating changes nothing
        notebook.cells.append(cell)
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples", name)
    nbformat.write(notebook, path + ".partial")
    os.replace(path + ".partial", path)
    print("wrote", path)


def main():
    for name, cells in NOTEBOOKS.items():
        write(name, cells)


if __name__ == "__main__":
    main()
