"""TF Serving's REST JSON formats for Predict, to and from numpy arrays.

Requests (TF Serving's "Predict API" doc): ``{"signature_name": ...,
"instances": [...]}`` (row format: one entry per example, an object of named
inputs, or a bare value when the signature has one input) or ``{"inputs":
...}`` (columnar: an object of named batched inputs, or a bare value for one
input). Values are converted to the dtype the signature declares; binary
strings are ``{"b64": "<base64>"}``. Replies: ``{"predictions": [...]}`` for
the row format (one entry per example: a bare value for one output, else an
object of outputs) and ``{"outputs": ...}`` for the columnar format.
"""

import base64
import binascii
import json

import numpy as np
import tensorflow as tf

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
    raise invalid(f"input {name}: expected strings, got {type(value).__name__}")


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
        raise invalid(f"input {name}: expected {dtype.name} values, got "
                      f"{'strings' if array.dtype.kind in 'SU' else 'mixed or non-numeric values'}")
    if target.kind in "iu":
        if array.dtype.kind == "f":
            raise invalid(f"input {name}: expected {dtype.name} (integers), got fractions")
        limits = np.iinfo(target)
        if array.min() < limits.min or array.max() > limits.max:
            raise invalid(f"input {name}: values out of {dtype.name} range")
    elif target.kind == "b" and array.dtype.kind != "b":
        raise invalid(f"input {name}: expected true/false values")
    return array.astype(target)


def parse_predict_request(body, input_specs):
    """Parses a Predict request body (bytes). ``input_specs(signature_name)``
    gives ``{input name: tf.TensorSpec}`` (and raises for an unknown
    signature). Returns ``(signature_name, {name: array}, row_format)``."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise invalid(f"JSON Parse error: {error}") from None
    if not isinstance(request, dict):
        raise invalid("JSON Parse error: the request must be a JSON object")
    signature_name = request.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise invalid("'signature_name' must be a string")
    has_rows, has_columns = "instances" in request, "inputs" in request
    if has_rows == has_columns:
        raise invalid("JSON request must contain exactly one of 'instances' (row format) "
                      "or 'inputs' (columnar format)")
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
        return {key: to_array(value, specs[key].dtype if key in specs else tf.float32, key)
                for key, value in inputs.items()}
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
    return array.tolist()


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
