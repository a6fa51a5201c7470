from __future__ import annotations

import pytest

from ml_serving import oip

FLOWER = {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}
INPUTS = oip.predict_inputs({
    "definitions": {"Flower": FLOWER},
    "endpoints": {"predict": {"request": {"properties": {
        "flowers": {"type": "array", "items": {"$ref": "#/components/schemas/Flower"}}}}}},
})


def test_tensor_rows_fill_numeric_records_in_field_order() -> None:
    payload = oip._inputs_to_payload(INPUTS, [
        {"name": "anything", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}])
    assert payload == {"flowers": [{"a": 1, "b": 2}, {"a": 3, "b": 4}]}


@pytest.mark.parametrize(
    "tensor, message",
    [
        ({"name": "flowers", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}, "needs 4 values"),
        ({"name": "flowers", "shape": [-1], "datatype": "FP32", "data": []}, "non-negative"),
        ({"name": "flowers", "shape": [1], "datatype": "FP32", "data": "x"}, "must be a list"),
    ],
)
def test_bad_tensors(tensor: dict, message: str) -> None:
    with pytest.raises(oip.TensorError, match=message):
        oip._inputs_to_payload(INPUTS, [tensor])


def test_outputs_one_tensor_per_record_field() -> None:
    outputs = oip._result_to_outputs([{"label": "x", "score": 0.5, "n": 1}, {"label": "y", "score": 1.0, "n": 2}])
    assert outputs == [
        {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["x", "y"]},
        {"name": "score", "datatype": "FP64", "shape": [2], "data": [0.5, 1.0]},
        {"name": "n", "datatype": "INT64", "shape": [2], "data": [1, 2]},
    ]
    assert oip._result_to_outputs([[1, 2], [3, 4]]) == [
        {"name": "output", "datatype": "INT64", "shape": [2, 2], "data": [1, 2, 3, 4]}]


def test_record_layouts_are_worked_out_once_per_model() -> None:
    assert INPUTS["flowers"] == oip.PredictInput(
        {"type": "array", "items": {"$ref": "#/components/schemas/Flower"}}, ("a", "b"), "FP64")
