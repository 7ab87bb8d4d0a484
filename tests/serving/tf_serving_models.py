"""The models of TF Serving's model-server tests, built with TensorFlow the
way its testdata scripts describe them (``saved_model_half_plus_two.py``,
``tensorflow_model_server_test.py``), in zero-padded version directories as
TF Serving's test data has them. Written here, not copied: what matters is
what the models compute and which signatures they carry.

- ``half_plus_two_tf1``: a TF1 graph that parses ``tf.Example``s with
  features ``x`` and ``x2``: y = 0.5 x + b, y2 = 0.5 x + c, y3 = 0.5 x2 + c
  (b = 2, c = 3; half_plus_three has b = 3). Signatures ``serving_default``
  (x -> y, both [-1, 1], fed past the parser), ``regress_x_to_y``,
  ``regress_x_to_y2``, ``regress_x2_to_y3`` and ``classify_x_to_y``.
- ``half_plus_two_tf2``: the same as a native TF2 module.
- ``saved_model_save`` and ``multiple_signatures``: the two
  ``tf.saved_model.save`` cases of the server test; ``keras_sequential``:
  its Keras case (tf_keras, whose saved signatures keep the layer names
  ``x`` and ``y`` as the test expects).
- ``no_default_signature``: a model without ``serving_default`` (TF
  Serving's bad-model case answers FAILED_PRECONDITION for it).
"""

import os

import tensorflow as tf

VERSION = 123
VERSION_DIR = "00000123"


def version_dir(base, version=VERSION):
    return os.path.join(base, f"{version:08d}")


def _features():
    v1 = tf.compat.v1
    return {"x": v1.FixedLenFeature([1], tf.float32),
            "x2": v1.FixedLenFeature([1], tf.float32, default_value=[0.0])}


def half_plus_two_tf1(base, version=VERSION, b=2.0, c=3.0):
    """The TF1 half_plus_two graph (module doc) as ``base/<version>``."""
    v1 = tf.compat.v1
    builder = v1.saved_model.builder.SavedModelBuilder(version_dir(base, version))
    info = v1.saved_model.utils.build_tensor_info
    build = v1.saved_model.signature_def_utils.build_signature_def
    constants = v1.saved_model.signature_constants
    with v1.Session(graph=tf.Graph()) as session:
        a = v1.Variable(0.5, name="a")
        bias = v1.Variable(b, name="b")
        c_var = v1.Variable(c, name="c")
        serialized = v1.placeholder(tf.string, name="tf_example", shape=[None])
        parsed = v1.parse_example(serialized, _features())
        x = tf.identity(parsed["x"], name="x")
        y = tf.identity(a * x + bias, name="y")
        y2 = tf.identity(a * x + c_var, name="y2")
        x2 = tf.identity(parsed["x2"], name="x2")
        a2, c2 = v1.Variable(0.5, name="a2"), v1.Variable(c, name="c2")
        y3 = tf.identity(a2 * x2 + c2, name="y3")

        def regression(inputs, outputs):
            return build({constants.REGRESS_INPUTS: info(inputs)},
                         {constants.REGRESS_OUTPUTS: info(outputs)},
                         constants.REGRESS_METHOD_NAME)

        signatures = {
            "serving_default": build({"x": info(x)}, {"y": info(y)},
                                     constants.PREDICT_METHOD_NAME),
            "regress_x_to_y": regression(serialized, y),
            "regress_x_to_y2": regression(serialized, y2),
            "regress_x2_to_y3": regression(x2, y3),
            "classify_x_to_y": build({constants.CLASSIFY_INPUTS: info(serialized)},
                                     {constants.CLASSIFY_OUTPUT_SCORES: info(y)},
                                     constants.CLASSIFY_METHOD_NAME),
        }
        session.run(v1.global_variables_initializer())
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
    builder.save()
    return base


class _HalfPlusTwo(tf.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = tf.Variable(0.5), tf.Variable(2.0), tf.Variable(3.0)

    def _x(self, serialized):
        return tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]

    @tf.function(input_signature=[tf.TensorSpec([1], tf.float32)])
    def predict(self, x):
        return {"y": self.a * x + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, serialized):
        return {"outputs": self.a * self._x(serialized) + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, serialized):
        return {"scores": self.a * self._x(serialized) + self.b}


def half_plus_two_tf2(base):
    """The native TF2 half_plus_two (predict, regress_x_to_y,
    classify_x_to_y) as ``base/00000123``."""
    model = _HalfPlusTwo()
    tf.saved_model.save(model, version_dir(base), signatures={
        "serving_default": model.predict, "regress_x_to_y": model.regress,
        "classify_x_to_y": model.classify})
    return base


def saved_model_save(base):
    """``y = 3 * 2 * x`` saved with ``tf.saved_model.save`` (expected 12)."""
    root = tf.train.Checkpoint()
    root.v1, root.v2 = tf.Variable(3.0), tf.Variable(2.0)
    root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
    tf.saved_model.save(root, version_dir(base),
                        root.f.get_concrete_function(tf.TensorSpec(None, tf.float32)))
    return base


def multiple_signatures(base):
    """Default signature answers y = 1, ``custom_signature_key`` y = 2."""
    root = tf.train.Checkpoint()
    root.f = tf.function(lambda x: {"y": 1.0}, input_signature=[tf.TensorSpec(None, tf.float32)])
    root.g = tf.function(lambda x: {"y": 2.0}, input_signature=[tf.TensorSpec(None, tf.float32)])
    tf.saved_model.save(root, version_dir(base), signatures={
        "serving_default": root.f, "custom_signature_key": root.g})
    return base


def keras_sequential(base):
    """An identity Sequential model, input ``x`` [None, 1], output ``y``."""
    import tf_keras

    model = tf_keras.models.Sequential()
    model.add(tf_keras.layers.Input(dtype="float32", shape=(1,), name="x"))
    model.add(tf_keras.layers.Lambda(lambda x: x, name="y"))
    tf.saved_model.save(model, version_dir(base))
    return base


def no_default_signature(base):
    """A model whose only signature is ``other``."""
    root = tf.train.Checkpoint()
    root.f = tf.function(lambda x: {"y": x}, input_signature=[tf.TensorSpec(None, tf.float32)])
    tf.saved_model.save(root, version_dir(base), signatures={"other": root.f})
    return base


class _Counter(tf.Module):
    def __init__(self):
        super().__init__()
        self.counter = tf.Variable(0.0)

    @tf.function(input_signature=[])
    def get_counter(self):
        return {"output": tf.identity(self.counter)}

    @tf.function(input_signature=[])
    def incr_counter(self):
        return {"output": self.counter.assign_add(1.0)}


def counter(base):
    """TF Serving's counter model: ``incr_counter`` adds one to a variable,
    ``get_counter`` reads it (what a warm-up replay leaves behind shows)."""
    model = _Counter()
    tf.saved_model.save(model, version_dir(base), signatures={
        "get_counter": model.get_counter, "incr_counter": model.incr_counter,
        "serving_default": model.get_counter})
    return base


def write_warmup_requests(export_dir, logs):
    """Writes ``assets.extra/tf_serving_warmup_requests`` (PredictionLog
    records) into a SavedModel directory."""
    extra = os.path.join(export_dir, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(extra, "tf_serving_warmup_requests")) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
