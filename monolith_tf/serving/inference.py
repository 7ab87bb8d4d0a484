"""TF Serving's inference requests as protos in and protos out, for one
resolved ``Servable``: Predict, Classify, Regress and MultiInference. The
gRPC API, the REST API (classify and regress are converted to these protos,
as TF Serving does) and warm-up replay all go through here.

- Predict outputs fill the typed fields (``float_val``, ``int64_val``, ...)
  as TF Serving does by default; ``tensor_content=True`` packs them instead
  (its ``--enable_serialization_as_tensor_content``).
- Classify and Regress take ``tf.Example`` inputs (``example_list``, or
  ``example_list_with_context`` whose context features every example
  shares), feed them serialized to the signature's one input, and read its
  ``classes``/``scores`` or ``outputs`` with TF Serving's checks and words.
  Signature method names are checked only with ``check_method_names``
  (TF Serving's ``--enable_signature_method_name_check``; off by default, as
  native TF2 signatures all say ``predict``).
"""

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_shape_pb2
from tensorflow_serving.apis import (classification_pb2, inference_pb2, predict_pb2,
                                     regression_pb2)

from monolith_tf.serving.errors import ServingError, invalid
from monolith_tf.serving.servable import DEFAULT_SIGNATURE

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
CLASSES, SCORES, REGRESS_OUTPUTS = "classes", "scores", "outputs"

# dtype kind and size -> the TensorProto field TF Serving fills (AsProtoField).
_TYPED_FIELD = {
    np.dtype(np.float32): "float_val", np.dtype(np.float64): "double_val",
    np.dtype(np.int32): "int_val", np.dtype(np.int16): "int_val",
    np.dtype(np.int8): "int_val", np.dtype(np.uint8): "int_val",
    np.dtype(np.uint16): "int_val", np.dtype(np.int64): "int64_val",
    np.dtype(np.uint32): "uint32_val", np.dtype(np.uint64): "uint64_val",
    np.dtype(np.bool_): "bool_val",
}


def array_from_tensor_proto(name, proto):
    """A request's TensorProto as a numpy array. Numeric tensors sent packed
    (``tensor_content``, what ``tf.make_tensor_proto`` writes) are viewed in
    place; others go through ``tf.make_ndarray``."""
    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
        if proto.tensor_content and dtype.is_numpy_compatible and dtype != tf.string:
            shape = [dim.size for dim in proto.tensor_shape.dim]
            array = np.frombuffer(proto.tensor_content, dtype=dtype.as_numpy_dtype)
            return array.reshape(shape)
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as error:
        raise invalid(f"input {name}: unreadable TensorProto: {error}") from None


def fill_tensor_proto(proto, array, tensor_content=False):
    """Writes numpy ``array`` into ``proto``: in its typed field (TF
    Serving's default), or packed in ``tensor_content``."""
    array = np.asarray(array)
    field = _TYPED_FIELD.get(array.dtype.newbyteorder("="))
    if field is None:  # strings, float16, complex: TensorFlow's own encoding
        proto.CopyFrom(tf.make_tensor_proto(array))
        return
    proto.dtype = tf.as_dtype(array.dtype).as_datatype_enum
    proto.tensor_shape.dim.extend(
        tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape)
    if tensor_content:
        proto.tensor_content = np.ascontiguousarray(array, array.dtype.newbyteorder("<")) \
            .tobytes()
    else:
        getattr(proto, field).extend(array.ravel().tolist())


def predict(servable, request, tensor_content=False):
    """The ``PredictResponse`` of ``request`` on ``servable``."""
    spec = request.model_spec
    inputs = {name: array_from_tensor_proto(name, proto)
              for name, proto in request.inputs.items()}
    outputs = servable.predict(spec.signature_name, inputs, list(request.output_filter))
    response = predict_pb2.PredictResponse()
    _answer_spec(response.model_spec, servable, spec.signature_name)
    for name, value in outputs.items():
        fill_tensor_proto(response.outputs[name], value, tensor_content)
    return response


def _answer_spec(answer, servable, signature_name):
    answer.name = servable.name
    answer.version.value = servable.version
    answer.signature_name = signature_name or DEFAULT_SIGNATURE


def serialized_examples(request_input):
    """The ``tf.Example``s of an ``Input`` proto, serialized, as a 1-D
    object array. With a context, each example is the context merged with
    the example (protobuf merge: the example's features win), as TF Serving
    feeds them."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        both = request_input.example_list_with_context
        context = both.context.SerializeToString()
        examples = [context + e.SerializeToString() for e in both.examples]
    else:
        raise invalid("Input is empty.")
    if not examples:
        raise invalid("Input is empty.")
    array = np.empty(len(examples), dtype=object)
    array[:] = examples
    return array


def _signature(servable, signature_name, method=None):
    """The signature's name and SignatureDef; with ``method``, its
    method_name must be that (TF Serving's method name check)."""
    name = signature_name or DEFAULT_SIGNATURE
    if name not in servable.signature_defs:
        raise invalid(f"No signature was found with the name: {name}")
    signature = servable.signature_defs[name]
    if method is not None and signature.method_name != method:
        what = "classification" if method == CLASSIFY_METHOD else "regression"
        raise invalid(f"Expected {what} signature method_name to be {method}. Was: "
                      f"{signature.method_name}")
    return name, signature


def _one_input(signature, what):
    if len(signature.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    name = next(iter(signature.inputs))
    if signature.inputs[name].dtype != tf.string.as_datatype_enum:
        raise invalid(f"No {what} inputs found in SignatureDef: the input must be "
                      "serialized tf.Example strings (DT_STRING)")
    return name


def classification_result(servable, signature_name, request_input, check_method_names=False):
    """``(ClassificationResult, signature name)`` of examples on a
    classification signature (TF Serving's checks on ``classes`` and
    ``scores``)."""
    name, signature = _signature(servable, signature_name,
                                 CLASSIFY_METHOD if check_method_names else None)
    input_name = _one_input(signature, "classification")
    if len(signature.outputs) not in (1, 2):
        raise invalid(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if CLASSES not in signature.outputs and SCORES not in signature.outputs:
        raise invalid(f'Expected classification signature outputs to contain at least one of '
                      f'"{CLASSES}" or "{SCORES}". Signature was: {sorted(signature.outputs)}')
    examples = serialized_examples(request_input)
    outputs = servable.run(name, {input_name: examples})
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    count = len(examples)
    for tensor, what, kind in ((classes, "classes", "OS"), (scores, "scores", "f")):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got "
                          f"{list(tensor.shape)}")
        if tensor.dtype.kind not in kind or (kind == "f" and tensor.dtype != np.float32):
            wanted = "DT_STRING" if what == "classes" else "DT_FLOAT"
            raise invalid(f"Expected {what} Tensor of {wanted}. Got: {tensor.dtype.name}")
        if tensor.shape[0] != count:
            raise invalid(f"Expected {what} output batch size of {count}. Got: "
                          f"{tensor.shape[0]}")
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise invalid(f"Tensors class and score should match in shape. Got "
                      f"{list(classes.shape)} vs. {list(scores.shape)}")
    result = classification_pb2.ClassificationResult()
    width = (classes if classes is not None else scores).shape[1]
    for row in range(count):
        classifications = result.classifications.add()
        for column in range(width):
            entry = classifications.classes.add()
            if classes is not None:
                label = classes[row, column]
                entry.label = label.decode("utf-8", "replace") if isinstance(label, bytes) \
                    else str(label)
            if scores is not None:
                entry.score = float(scores[row, column])
    return result, name


def regression_result(servable, signature_name, request_input, check_method_names=False):
    """``(RegressionResult, signature name)`` of examples on a regression
    signature (its one float output, ``[batch]`` or ``[batch, 1]``)."""
    name, signature = _signature(servable, signature_name,
                                 REGRESS_METHOD if check_method_names else None)
    input_name = _one_input(signature, "regression")
    if len(signature.outputs) != 1:
        raise invalid("Expected one output Tensor.")
    if REGRESS_OUTPUTS not in signature.outputs:
        raise invalid(f"No regression outputs found in SignatureDef: outputs are "
                      f"{sorted(signature.outputs)}, expected \"{REGRESS_OUTPUTS}\"")
    examples = serialized_examples(request_input)
    values = servable.run(name, {input_name: examples})[REGRESS_OUTPUTS]
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise invalid(f"Expected output Tensor shape to be either [batch_size] or "
                      f"[batch_size, 1] but got {list(values.shape)}")
    if values.shape[0] != len(examples):
        raise invalid(f"Input batch size did not match output batch size: {len(examples)} "
                      f"vs. {values.shape[0]}")
    if values.dtype != np.float32:
        raise invalid(f"Expected output Tensor of DT_FLOAT.  Got: {values.dtype.name}")
    result = regression_pb2.RegressionResult()
    for value in values.reshape(-1):
        result.regressions.add().value = float(value)
    return result, name


def _examples_response(response, result_of, servable, request, check_method_names):
    result, name = result_of(servable, request.model_spec.signature_name, request.input,
                             check_method_names)
    response.result.CopyFrom(result)
    _answer_spec(response.model_spec, servable, name)
    return response


def classify(servable, request, check_method_names=False):
    """The ``ClassificationResponse`` of ``request`` on ``servable``."""
    return _examples_response(classification_pb2.ClassificationResponse(),
                              classification_result, servable, request, check_method_names)


def regress(servable, request, check_method_names=False):
    """The ``RegressionResponse`` of ``request`` on ``servable``."""
    return _examples_response(regression_pb2.RegressionResponse(), regression_result,
                              servable, request, check_method_names)


def multi_inference(resolve, request, check_method_names=False):
    """The ``MultiInferenceResponse`` of ``request``: each task (classify or
    regress) on the same examples of one model. ``resolve(model_spec)``
    gives the Servable of a task."""
    names = {task.model_spec.name for task in request.tasks}
    if not request.tasks:
        raise invalid("MultiInferenceRequest has no tasks.")
    if "" in names:
        raise invalid("Found ModelSpec with an empty model name.")
    if len(names) != 1:
        raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same "
                      "model name.")
    seen = set()
    for task in request.tasks:
        signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if signature_name in seen:
            raise invalid(f"Duplicate evaluation of signature: {signature_name}")
        seen.add(signature_name)
        if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f"Unsupported signature method_name: {task.method_name}")
    response = inference_pb2.MultiInferenceResponse()
    for task in request.tasks:
        servable = resolve(task.model_spec)
        if (task.model_spec.signature_name or DEFAULT_SIGNATURE) not in servable.signature_defs:
            raise invalid(f"Requested signature not found in model graph: "
                          f"{task.model_spec.signature_name or DEFAULT_SIGNATURE}")
        result = response.results.add()
        if task.method_name == CLASSIFY_METHOD:
            answer, name = classification_result(servable, task.model_spec.signature_name,
                                                 request.input, check_method_names)
            result.classification_result.CopyFrom(answer)
        else:
            answer, name = regression_result(servable, task.model_spec.signature_name,
                                             request.input, check_method_names)
            result.regression_result.CopyFrom(answer)
        _answer_spec(result.model_spec, servable, name)
    return response
