"""The one ndarray <-> TensorProto codec, against hand-built protos and TensorFlow's own."""

from __future__ import annotations

import numpy as np
import pytest

from moodtunes_tfserving.tensors import DataType, TensorProto, dtype_name, make_ndarray, make_tensor_proto

VALUES = [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    np.array([[1.5, -2.0]], dtype=">f8"),  # big-endian input goes out little-endian
    np.array([0, 255, 7], dtype=np.uint8),
    np.array([-(2**40), 2**40], dtype=np.int64),
    np.array([2**63 + 5], dtype=np.uint64),
    np.array([True, False]),
    np.array([1.5, -0.25], dtype=np.float16),
    np.array([1 + 2j], dtype=np.complex64),
    np.array([3 - 1j], dtype=np.complex128),
    np.array([b"a", b"bc"], dtype=object),
    np.zeros((0, 5), np.float32),
]


@pytest.mark.parametrize("typed_values", [False, True], ids=["tensor_content", "typed_values"])
@pytest.mark.parametrize("value", VALUES, ids=lambda v: str(v.dtype))
def test_round_trip(value, typed_values):
    proto = make_tensor_proto(value, typed_values=typed_values)
    assert bool(proto.tensor_content) == (not typed_values and value.dtype != object and value.size > 0)
    decoded = make_ndarray(proto)
    assert decoded.shape == value.shape
    assert decoded.dtype == (np.dtype(object) if value.dtype == object else value.dtype.newbyteorder("="))
    np.testing.assert_array_equal(decoded, value)


def test_decodes_typed_value_fields_as_tf_serving_sends_them():
    proto = TensorProto(dtype=DataType.DT_FLOAT, float_val=[1.0, 2.0, 3.0, 4.0])
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=2)
    np.testing.assert_array_equal(make_ndarray(proto), [[1.0, 2.0], [3.0, 4.0]])

    fill = TensorProto(dtype=DataType.DT_INT32, int_val=[1, 7])  # TF repeats the last value
    fill.tensor_shape.dim.add(size=4)
    np.testing.assert_array_equal(make_ndarray(fill), [1, 7, 7, 7])

    empty = TensorProto(dtype=DataType.DT_INT64)
    empty.tensor_shape.dim.add(size=3)
    np.testing.assert_array_equal(make_ndarray(empty), [0, 0, 0])

    text = TensorProto(dtype=DataType.DT_STRING, string_val=[b"happy"])
    assert make_ndarray(text).item() == b"happy"

    too_many = TensorProto(dtype=DataType.DT_FLOAT, float_val=[1.0, 2.0, 3.0])
    too_many.tensor_shape.dim.add(size=2)
    with pytest.raises(ValueError, match="3 values for shape"):
        make_ndarray(too_many)


def test_unsupported_dtypes_are_named():
    with pytest.raises(TypeError, match="DT_BFLOAT16"):
        make_ndarray(TensorProto(dtype=DataType.DT_BFLOAT16))
    with pytest.raises(TypeError, match="datetime64"):
        make_tensor_proto(np.array(["2024-01-01"], dtype="datetime64[D]"))
    assert (dtype_name(DataType.DT_FLOAT), dtype_name(DataType.DT_STRING)) == ("float32", "string")


@pytest.mark.parametrize("value", [v for v in VALUES if v.size], ids=lambda v: str(v.dtype))
def test_agrees_with_tensorflow_both_ways(value):
    """Both encodings decode in TF to the same array, and TF's protos decode here."""
    tf = pytest.importorskip("tensorflow")
    for typed_values in (False, True):
        np.testing.assert_array_equal(
            tf.make_ndarray(make_tensor_proto(value, typed_values=typed_values)), value
        )
    native = value.astype(value.dtype.newbyteorder("="))  # TF writes big-endian arrays' bytes as is
    np.testing.assert_array_equal(make_ndarray(tf.make_tensor_proto(native)), value)
