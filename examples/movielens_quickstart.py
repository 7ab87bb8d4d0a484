"""MovieLens 100k with TFRS on raw ids: ranking (RMSE, AUC) and retrieval
(top-k), embeddings in HashEmbedding tables, no vocabulary step.

    make data && python examples/movielens_quickstart.py [--epochs 3]

`make demo` runs this after the table quickstart. Same model as the notebook
examples/movielens_quickstart.ipynb.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # TFRS needs tf_keras
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import movielens_model  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=None, help="cap on steps per epoch")
    args = parser.parse_args()
    metrics, history = movielens_model.train_and_evaluate(
        epochs=args.epochs, max_steps=args.max_steps, verbose=1)
    print("ranking loss per epoch:", [round(float(x), 4) for x in history["loss"]])
    for name, value in metrics.items():
        print(f"{name:>24}: {value:.4f}" if isinstance(value, float) else f"{name:>24}: {value}")
    if not metrics["test_rmse"] < 1.2:
        raise SystemExit("ranking did not learn: test RMSE >= 1.2")


if __name__ == "__main__":
    main()
