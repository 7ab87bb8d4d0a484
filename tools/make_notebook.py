"""Writes examples/movielens_quickstart.ipynb (unexecuted) from the cells
below, so the notebook is reviewed as Python and cannot drift into a stale
copy of the model: it imports examples/movielens_model.py like the script.

    python tools/make_notebook.py
"""

import os

import nbformat

CELLS = [
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


def main():
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    for kind, source in CELLS:
        cell = (nbformat.v4.new_markdown_cell if kind == "markdown"
                else nbformat.v4.new_code_cell)(source)
        notebook.cells.append(cell)
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples", "movielens_quickstart.ipynb")
    nbformat.write(notebook, path + ".partial")
    os.replace(path + ".partial", path)
    print("wrote", path)


if __name__ == "__main__":
    main()
