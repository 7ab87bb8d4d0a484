"""``export MODEL OUT``: a saved Keras model with HashEmbedding layers ->
a stock-ops serving SavedModel."""

from monolith_tf.export_format import ROW_DTYPES
from monolith_tf.quiet_start import import_tensorflow

NAME, HELP = "export", "stock-ops serving SavedModel"


def add_arguments(parser):
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--row-dtype", choices=ROW_DTYPES, default=ROW_DTYPES[0],
                        help="float16 halves the rows' size (error bound: export.py)")


def run(args):
    export(args.model, args.out, args.row_dtype)


def export(model_path, out, row_dtype="float32"):
    """Loads a saved Keras model and writes the stock-ops serving SavedModel."""
    import_tensorflow()
    import tensorflow as tf

    from monolith_tf import layers  # noqa: F401  (registers the layers, loads the ops)
    from monolith_tf.export import export_saved_model

    model = tf.keras.models.load_model(model_path)
    names = export_saved_model(model, out, row_dtype=row_dtype)
    print(f"exported {model_path} -> {out}; upsert tables: {', '.join(names)}")
