"""``inspect DIR``: a summary of the sparse checkpoints in DIR (reads
manifests only; no TensorFlow)."""

import json
import os

from monolith_tf.quiet_start import import_tensorflow

NAME, HELP = "inspect", "summarize sparse checkpoints"


def add_arguments(parser):
    parser.add_argument("directory")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args):
    result = inspect(args.directory, as_json=args.json)
    if args.json:
        print(json.dumps(result, indent=1))


def inspect(directory, as_json=False):
    """Prints (or returns, for as_json) a summary of the sparse checkpoints."""
    import_tensorflow()  # the checkpoint module loads it
    from monolith_tf.sparse_checkpoint import CheckpointError, list_checkpoints, read_manifest

    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    if os.path.isdir(os.path.join(directory, "sparse")):
        directory = os.path.join(directory, "sparse")  # a training worker's model dir
    summary = []
    for sequence, kind, path in list_checkpoints(directory):
        manifest = read_manifest(path)
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
                        "path": path, "metadata": manifest.get("metadata", {}),
                        "tables": tables})
    if as_json:
        return summary
    for checkpoint in summary:
        step = checkpoint["metadata"].get("step")
        print(f"{os.path.basename(checkpoint['path'])}  (base {checkpoint['base']}"
              + (f", step {step})" if step is not None else ")"))
        for name, t in checkpoint["tables"].items():
            print(f"  {name}: dim {t['dim']}, {t['rows']:,} rows, {t['bytes']:,} bytes, "
                  f"{t['removed']:,} removed, updates {t['oldest_update']}..{t['newest_update']}, "
                  f"now {t['now']}")
    if not summary:
        print(f"{directory}: no complete sparse checkpoint")
    return summary
