"""TF Serving's REST JSON formats: Predict to and from numpy arrays,
Classify and Regress to and from their protos.

Requests (TF Serving's "Predict API" doc): ``{"signature_name": ...,
"instances": [...]}`` (row format: one entry per example, an object of named
inputs, or a bare value when the signature has one input) or ``{"inputs":
...}`` (columnar: an object of named batched inputs, or a bare value for one
input). Values are converted to the dtype the signature declares; binary
strings are ``{"b64": "<base64>"}``. Replies: ``{"predictions": [...]}`` for
the row format (one entry per example: a bare value for one output, else an
object of outputs) and ``{"outputs": ...}`` for the columnar format.
Classify and Regress take ``{"signature_name": ..., "context": {...},
"examples": [...]}`` (features as JSON values, made into tf.Examples) and
answer ``{"results": ...}``. Error messages use TF Serving's words where
clients match on them ("JSON Parse error: ...", "is not of expected type").
"""

import base64
import binascii
import json

import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import input_pb2

from monolith_tf.serving.errors import invalid


def _is_b64(value):
    return isinstance(value, dict) and set(value) == {"b64"}


def _strings(value, name):
    if _is_b64(value):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, TypeError):
            raise invalid(f"input {name}: b64 value is not valid base64") from None
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, list):
        return [_strings(item, name) for item in value]
    raise invalid(f"input {name}: JSON Value: {_debug(value)} Type: {_json_type(value)} is "
                  "not of expected type: string")


def _json_type(value):
    """RapidJSON's type name of a JSON value, as TF Serving's errors say it."""
    for kind, name in ((bool, "False" if value is False else "True"), (str, "String"),
                       (dict, "Object"), (list, "Array"), ((int, float), "Number")):
        if isinstance(value, kind):
            return name
    return "Null"


def _first_non_number(value):
    if isinstance(value, list):
        for item in value:
            found = _first_non_number(item)
            if found is not None:
                return found
        return None
    return None if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _shape_of(value):
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def to_array(value, dtype, name):
    """The JSON ``value`` of input ``name`` as a numpy array of ``dtype`` (a
    tf.DType). INVALID_ARGUMENT for ragged lists, strings for numbers,
    fractions for integers, or integers out of range."""
    if dtype == tf.string:
        strings = _strings(value, name)
        array = np.empty(_shape_of(strings), dtype=object)
        try:
            array[...] = strings
        except ValueError:
            raise invalid(f"input {name}: lists of unequal lengths (ragged)") from None
        if any(not isinstance(item, bytes) for item in array.flat):
            raise invalid(f"input {name}: lists of unequal lengths (ragged)")
        return array
    try:
        array = np.array(value)
    except ValueError:
        raise invalid(f"input {name}: lists of unequal lengths (ragged)") from None
    target = np.dtype(dtype.as_numpy_dtype)
    if array.size == 0:
        return array.astype(target)
    if array.dtype.kind not in "biuf":
        sample = _first_non_number(value)
        raise invalid(f"input {name}: JSON Value: {_debug(sample)} Type: {_json_type(sample)} "
                      f"is not of expected type: {dtype.name}")
    if target.kind in "iu":
        if array.dtype.kind == "f":
            raise invalid(f"input {name}: JSON Value: fractions Type: Number is not of "
                          f"expected type: {dtype.name} (integers, got fractions)")
        limits = np.iinfo(target)
        if array.min() < limits.min or array.max() > limits.max:
            raise invalid(f"input {name}: values out of {dtype.name} range")
    elif target.kind == "b" and array.dtype.kind != "b":
        raise invalid(f"input {name}: expected true/false values")
    return array.astype(target)


def _parse_document(body):
    """The JSON object of a request body; TF Serving's words for what is
    not one."""
    if not body.strip():
        raise invalid("JSON Parse error: The document is empty")
    try:
        request = json.loads(body)
    except UnicodeDecodeError:
        raise invalid("JSON Parse error: Invalid encoding in string.") from None
    except ValueError as error:
        raise invalid(f"JSON Parse error: Invalid value. ({error})") from None
    if not isinstance(request, dict):
        raise invalid(f"JSON Value: {_debug(request)} Is not object")
    return request


def _signature_name(request):
    signature_name = request.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise invalid(f"JSON Value: {_debug(signature_name)} not formatted correctly. "
                      "'signature_name' key must be a string value.")
    return signature_name


def _debug(value):
    return json.dumps(value)[:200]


def parse_predict_request(body, input_specs):
    """Parses a Predict request body (bytes). ``input_specs(signature_name)``
    gives ``{input name: tf.TensorSpec}`` (and raises for an unknown
    signature). Returns ``(signature_name, {name: array}, row_format)``."""
    request = _parse_document(body)
    signature_name = _signature_name(request)
    has_rows, has_columns = "instances" in request, "inputs" in request
    if has_rows and has_columns:
        raise invalid(f"JSON Value: {_debug(request)} Not formatted correctly expecting only "
                      "one of 'inputs' or 'instances' keys to exist ")
    if not has_rows and not has_columns:
        raise invalid("Missing 'inputs' or 'instances' key")
    specs = input_specs(signature_name)
    if has_rows:
        return signature_name, _rows_to_inputs(request["instances"], specs), True
    return signature_name, _columns_to_inputs(request["inputs"], specs), False


def _single_name(specs, what):
    if len(specs) != 1:
        raise invalid(f"{what} without input names needs a signature with one input; "
                      f"this one has {sorted(specs)}")
    return next(iter(specs))


def _rows_to_inputs(instances, specs):
    if not isinstance(instances, list) or not instances:
        raise invalid("'instances' must be a non-empty list")
    named = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not named:
        name = _single_name(specs, "'instances'")
        return {name: to_array(instances, specs[name].dtype, name)}
    keys = set(instances[0])
    for instance in instances:
        if not isinstance(instance, dict) or set(instance) != keys:
            raise invalid("every instance must be an object with the same input names as the "
                          f"first ({sorted(keys)})")
    return {key: to_array([instance[key] for instance in instances],
                          specs[key].dtype if key in specs else tf.float32, key)
            for key in keys}


def _columns_to_inputs(inputs, specs):
    if isinstance(inputs, dict) and not _is_b64(inputs):
        # Only the signature's inputs are looked up, as TF Serving does:
        # other keys are ignored.
        missing = sorted(set(specs) - set(inputs))
        if missing:
            raise invalid(f"Missing named input: {missing[0]} in 'inputs' object.")
        return {key: to_array(inputs[key], specs[key].dtype, key) for key in specs}
    name = _single_name(specs, "'inputs'")
    return {name: to_array(inputs, specs[name].dtype, name)}


def _json_value(array):
    if array.dtype.kind in "OS":
        def convert(item):
            if isinstance(item, list):
                return [convert(x) for x in item]
            try:
                return item.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(item).decode("ascii")}
        return convert(array.tolist())
    if array.dtype == np.float32:
        return shortest_decimals(array).tolist()
    return array.tolist()


def shortest_decimals(values):
    """float32 ``values`` as the float64s of their shortest round-tripping
    decimals (0.2f -> 0.2, not 0.20000000298023224), the numbers TF Serving
    writes for float outputs."""
    return np.asarray(values, np.float32).astype(str).astype(np.float64)


def predict_response(outputs, row_format):
    """The JSON reply (a dict) for ``outputs`` (``{name: array}``)."""
    if not row_format:
        if len(outputs) == 1:
            return {"outputs": _json_value(next(iter(outputs.values())))}
        return {"outputs": {key: _json_value(value) for key, value in outputs.items()}}
    sizes = {value.shape[0] if value.ndim else None for value in outputs.values()}
    if len(sizes) != 1 or None in sizes:
        raise invalid("Output tensors don't have the same 0th dimension (or are scalars): "
                      "ask for the columnar format ('inputs') instead of 'instances'")
    if len(outputs) == 1:
        return {"predictions": _json_value(next(iter(outputs.values())))}
    columns = {key: _json_value(value) for key, value in outputs.items()}
    return {"predictions": [{key: column[i] for key, column in columns.items()}
                            for i in range(sizes.pop())]}


# ------------------------------------------------ classify and regress


def _feature(name, value, feature):
    """Fills a tf.train.Feature from a JSON feature value (a value or a
    list): whole numbers make an int64_list, any fraction a float_list,
    strings and {"b64": ...} a bytes_list."""
    values = value if isinstance(value, list) else [value]
    if not values:
        return
    if all(isinstance(v, (str, dict)) for v in values):
        feature.bytes_list.value.extend(
            _strings(v, name) if isinstance(v, dict) else v.encode("utf-8") for v in values)
        if any(isinstance(v, dict) and not _is_b64(v) for v in values):
            raise invalid(f"Feature: {name} has element with unexpected JSON type: Object")
        return
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        odd = next(v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)))
        raise invalid(f"Feature: {name} has element with unexpected JSON type: "
                      f"{type(odd).__name__}")
    if all(isinstance(v, int) for v in values):
        if any(not -(1 << 63) <= v < (1 << 63) for v in values):
            raise invalid(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        feature.int64_list.value.extend(values)
    else:
        feature.float_list.value.extend(float(v) for v in values)


def _example(document):
    if not isinstance(document, dict):
        raise invalid(f"Example must be JSON object but got JSON {type(document).__name__}")
    example = example_pb2.Example()
    for name, value in document.items():
        _feature(name, value, example.features.feature[name])
    return example


def parse_examples_request(body, method):
    """Parses a Classify or Regress request body (``{"signature_name":
    ..., "context": {...}, "examples": [{feature: value}, ...]}``). Returns
    ``(signature_name, tensorflow.serving.Input)``."""
    request = _parse_document(body)
    signature_name = _signature_name(request)
    if "examples" not in request:
        raise invalid(f"JSON Value: {_debug(request)} When method is {method}, key 'examples' "
                      "is expected and was not found")
    examples = request["examples"]
    if not isinstance(examples, list):
        raise invalid(f"JSON Value: {_debug(request)} Expecting 'examples' value to be an "
                      "list/array")
    if not examples:
        raise invalid(f"JSON Value: {_debug(request)} 'examples' value is an empty array")
    request_input = input_pb2.Input()
    if "context" in request:
        both = request_input.example_list_with_context
        both.context.CopyFrom(_example(request["context"]))
        both.examples.extend(_example(e) for e in examples)
    else:
        request_input.example_list.examples.extend(_example(e) for e in examples)
    return signature_name, request_input


def classification_json(result):
    """TF Serving's JSON of a ClassificationResult: ``{"results": [[[label,
    score], ...] per example]}``."""
    return {"results": [[[entry.label, float(shortest_decimals(entry.score))]
                         for entry in example.classes] for example in result.classifications]}


def regression_json(result):
    """TF Serving's JSON of a RegressionResult: ``{"results": [value per
    example]}``."""
    return {"results": shortest_decimals([entry.value for entry in result.regressions])
            .tolist()}
