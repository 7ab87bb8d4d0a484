"""Command line: ``python -m monolith_tf <command>``.

  inspect DIR             sparse checkpoints in DIR: kind, tables, rows,
                          bytes, data-time range (reads manifests only)
  export MODEL OUT        a saved Keras model (.keras, or a tf_keras SavedModel
                          directory) with HashEmbedding layers -> a stock-ops
                          serving SavedModel at OUT

Training from files is the training worker's (a later issue).
"""

import argparse
import json
import os
import sys


def inspect(directory, as_json=False):
    """Prints (or returns, for as_json) a summary of the sparse checkpoints."""
    from monolith_tf.sparse_checkpoint import CheckpointError, list_checkpoints

    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    summary = []
    for sequence, kind, path in list_checkpoints(directory):
        with open(os.path.join(path, "manifest.json")) as f:
            manifest = json.load(f)
        tables = {}
        for name, entry in manifest["tables"].items():
            rows = sum(info["rows"] for info in entry["files"])
            nbytes = sum(info["bytes"] for info in entry["files"])
            oldest = [f["oldest_update"] for f in entry["files"] if f["oldest_update"] is not None]
            newest = [f["newest_update"] for f in entry["files"] if f["newest_update"] is not None]
            oldest = min(oldest) if oldest else None
            newest = max(newest) if newest else None
            tables[name] = {"dim": entry["dim"], "rows": rows, "bytes": nbytes,
                            "removed": entry.get("removed", {}).get("keys", 0),
                            "oldest_update": oldest, "newest_update": newest,
                            "now": entry["now"]}
        summary.append({"sequence": sequence, "kind": kind, "base": manifest["base"],
                        "path": path, "tables": tables})
    if as_json:
        return summary
    for checkpoint in summary:
        print(f"{os.path.basename(checkpoint['path'])}  (base {checkpoint['base']})")
        for name, t in checkpoint["tables"].items():
            print(f"  {name}: dim {t['dim']}, {t['rows']:,} rows, {t['bytes']:,} bytes, "
                  f"{t['removed']:,} removed, updates {t['oldest_update']}..{t['newest_update']}, "
                  f"now {t['now']}")
    if not summary:
        print(f"{directory}: no complete sparse checkpoint")
    return summary


def export(model_path, out):
    """Loads a saved Keras model and writes the stock-ops serving SavedModel."""
    import tensorflow as tf

    import monolith_tf  # noqa: F401  (registers the layers and loads the ops)

    model = tf.keras.models.load_model(model_path)
    names = monolith_tf.export_saved_model(model, out)
    print(f"exported {model_path} -> {out}; upsert tables: {', '.join(names)}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m monolith_tf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    inspect_parser = commands.add_parser("inspect", help="summarize sparse checkpoints")
    inspect_parser.add_argument("directory")
    inspect_parser.add_argument("--json", action="store_true", help="print JSON")
    export_parser = commands.add_parser("export", help="stock-ops serving SavedModel")
    export_parser.add_argument("model")
    export_parser.add_argument("out")
    args = parser.parse_args(argv)
    from monolith_tf.sparse_checkpoint import CheckpointError

    try:
        if args.command == "inspect":
            result = inspect(args.directory, as_json=args.json)
            if args.json:
                print(json.dumps(result, indent=1))
        else:
            export(args.model, args.out)
    except (CheckpointError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
