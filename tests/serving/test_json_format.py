"""TF Serving's REST JSON formats, parsed against signature specs."""

import base64
import json

import numpy as np
import pytest
import tensorflow as tf

from monolith_tf.serving.errors import ServingError
from monolith_tf.serving.json_format import parse_predict_request, predict_response, to_array

SPECS = {"serving_default": {"ids": tf.TensorSpec([None], tf.int64),
                             "text": tf.TensorSpec([None], tf.string),
                             "dense": tf.TensorSpec([None, 2], tf.float32)},
         "single": {"x": tf.TensorSpec([None, 2], tf.float32)}}


def specs(signature):
    return SPECS[signature or "serving_default"]


def parse(document):
    return parse_predict_request(json.dumps(document).encode(), specs)


def test_row_format_named_inputs_with_b64_strings():
    name, inputs, row_format = parse({"instances": [
        {"ids": 1, "text": "héllo", "dense": [1, 2.5]},
        {"ids": 2, "text": {"b64": base64.b64encode(b"\xff\x00").decode()}, "dense": [3, 4]}]})
    assert name == "" and row_format
    assert inputs["ids"].dtype == np.int64 and inputs["ids"].tolist() == [1, 2]
    assert inputs["text"].tolist() == ["héllo".encode(), b"\xff\x00"]
    assert inputs["dense"].dtype == np.float32
    np.testing.assert_array_equal(inputs["dense"], [[1, 2.5], [3, 4]])


def test_columnar_and_bare_values_for_one_input():
    _, inputs, row_format = parse({"signature_name": "single", "inputs": [[1, 2], [3, 4]]})
    assert not row_format and inputs["x"].shape == (2, 2)
    _, inputs, row_format = parse({"signature_name": "single", "instances": [[1, 2]]})
    assert row_format and inputs["x"].tolist() == [[1.0, 2.0]]


@pytest.mark.parametrize("document,message", [
    ({"instances": []}, "non-empty"),
    ({"instances": [{"ids": 1, "text": "a", "dense": [1, 2]}, {"ids": 2, "text": "b"}]},
     "same input names"),
    ({"instances": [1, 2]}, "one input"),
    ({"inputs": {"ids": [1, "x"], "text": ["a", "b"], "dense": [[1, 2]]}},
         'JSON Value: "x" Type: String is not of expected type: int64'),
    ({"inputs": {"ids": [2**63], "text": ["a"], "dense": [[1, 2]]}}, "range"),
    ({"inputs": {"ids": [1], "text": [3], "dense": [[1, 2]]}},
         "JSON Value: 3 Type: Number is not of expected type: string"),
    ({"inputs": {"ids": [1], "text": [{"b64": "***"}], "dense": [[1, 2]]}}, "base64"),
    ({"inputs": {"ids": [1], "text": [["a"], "b"], "dense": [[1, 2]]}}, "ragged"),
        ({"inputs": {"ids": [1], "text": ["a"]}}, "Missing named input: dense in 'inputs' object."),
    ({"signature_name": 3, "inputs": {}}, "signature_name"),
    ({}, "Missing 'inputs' or 'instances' key"),
])
def test_bad_requests_are_invalid_argument(document, message):
    with pytest.raises(ServingError) as error:
        parse(document)
    assert error.value.http_status == 400
    assert message in error.value.message


@pytest.mark.parametrize("body,message", [
    (b"{", "JSON Parse error: Invalid value"),
    (b"  ", "JSON Parse error: The document is empty"),
    (b"\xff", "JSON Parse error: Invalid encoding"),
    (b"[1, 2]", "JSON Value: [1, 2] Is not object"),
])
def test_not_json_and_not_an_object(body, message):
    with pytest.raises(ServingError) as error:
        parse_predict_request(body, specs)
    assert error.value.http_status == 400
    assert message in error.value.message


def test_columnar_requests_ignore_keys_the_signature_does_not_take():
    _, inputs, _ = parse_predict_request(json.dumps({"inputs": {
        "ids": [1], "text": ["a"], "dense": [[1, 2]], "extra": "ignored"}}).encode(), specs)
    assert sorted(inputs) == ["dense", "ids", "text"]


def test_replies_in_both_formats():
    one = {"output": np.array([[0.5], [1.5]], np.float32)}
    assert predict_response(one, True) == {"predictions": [[0.5], [1.5]]}
    assert predict_response(one, False) == {"outputs": [[0.5], [1.5]]}
    two = {"score": np.array([1.0, 2.0]), "label": np.array([b"a", b"\xff"], dtype=object)}
    assert predict_response(two, True) == {"predictions": [
        {"score": 1.0, "label": "a"}, {"score": 2.0, "label": {"b64": "/w=="}}]}
    assert predict_response(two, False) == {"outputs": {
        "score": [1.0, 2.0], "label": ["a", {"b64": "/w=="}]}}
    with pytest.raises(ServingError, match="columnar"):
        predict_response({"rows": np.int64(3)}, True)


def test_to_array_keeps_empty_batches_typed():
    assert to_array([], tf.int64, "ids").dtype == np.int64
    assert to_array([True, False], tf.bool, "flags").tolist() == [True, False]


def test_float_outputs_are_written_as_their_shortest_decimals():
    """TF Serving writes 0.2f as 0.2, not as the double nearest to it."""
    outputs = {"y": np.array([0.2, 1 / 3, 2.5, np.float32(16777217)], np.float32)}
    text = json.dumps(predict_response(outputs, True))
    assert text == '{"predictions": [0.2, 0.33333334, 2.5, 16777216.0]}'
    assert json.dumps(predict_response({"y": np.array([0.2])}, False)) == '{"outputs": [0.2]}'
