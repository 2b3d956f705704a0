"""numpy <-> TensorProto with numpy alone: the one codec of the client and the model server.

Decoding reads `tensor_content` or the typed value field (`float_val`, `int_val`, ...) with TF's
fill-with-last-value rule, so it takes what real TF Serving sends. Encoding writes either
`tensor_content` (compact little-endian bytes: what the client sends) or, with `typed_values=True`,
the typed field, as TF Serving's Predict answers (`Tensor::AsProtoField`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moodtunes_tfserving.proto.tensorflow.core.framework import tensor_pb2, types_pb2

TensorProto = tensor_pb2.TensorProto
DataType = types_pb2.DataType

_STRING = np.dtype(object)
# DataType name -> (numpy dtype, TensorProto field holding the values when tensor_content is empty)
_DTYPES: dict[str, tuple[np.dtype, str]] = {
    "DT_FLOAT": (np.dtype(np.float32), "float_val"),
    "DT_DOUBLE": (np.dtype(np.float64), "double_val"),
    "DT_INT32": (np.dtype(np.int32), "int_val"),
    "DT_UINT8": (np.dtype(np.uint8), "int_val"),
    "DT_INT16": (np.dtype(np.int16), "int_val"),
    "DT_INT8": (np.dtype(np.int8), "int_val"),
    "DT_UINT16": (np.dtype(np.uint16), "int_val"),
    "DT_INT64": (np.dtype(np.int64), "int64_val"),
    "DT_UINT32": (np.dtype(np.uint32), "uint32_val"),
    "DT_UINT64": (np.dtype(np.uint64), "uint64_val"),
    "DT_BOOL": (np.dtype(np.bool_), "bool_val"),
    "DT_HALF": (np.dtype(np.float16), "half_val"),
    "DT_COMPLEX64": (np.dtype(np.complex64), "scomplex_val"),
    "DT_COMPLEX128": (np.dtype(np.complex128), "dcomplex_val"),
    "DT_STRING": (_STRING, "string_val"),
}
_ENUM = {name: DataType.Value(name) for name in _DTYPES}
_BY_ENUM = {_ENUM[name]: entry for name, entry in _DTYPES.items()}
_BY_NUMPY = {dtype: _ENUM[name] for name, (dtype, _) in _DTYPES.items() if dtype != _STRING}


def dtype_name(enum: int) -> str:
    """DataType enum -> numpy-style name ("float32"); other types keep TF's name ("DT_BFLOAT16")."""
    entry = _BY_ENUM.get(enum)
    if entry is None:
        return DataType.Name(enum) if enum in DataType.values() else f"DT_{enum}"
    return "string" if entry[0] == _STRING else entry[0].name


def write_tensor_proto(value: Any, out: TensorProto, *, typed_values: bool = False) -> TensorProto:
    """Fills `out` (dtype, shape, values) from a numpy array or nested lists; returns it."""
    arr = np.asarray(value)
    for size in arr.shape:
        out.tensor_shape.dim.add(size=size)
    if arr.dtype.kind in "OSU":
        out.dtype = _ENUM["DT_STRING"]
        out.string_val.extend(v.encode() if isinstance(v, str) else bytes(v) for v in arr.reshape(-1))
        return out
    native = arr.dtype.newbyteorder("=")
    enum = _BY_NUMPY.get(native)
    if enum is None:
        raise TypeError(f"cannot encode a tensor of dtype {arr.dtype}")
    out.dtype = enum
    if not typed_values:
        out.tensor_content = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
        return out
    field = _BY_ENUM[enum][1]
    flat = np.ascontiguousarray(arr, dtype=native).reshape(-1)
    if field == "half_val":  # float16 bit patterns, one per int32
        flat = flat.view(np.uint16)
    elif field in ("scomplex_val", "dcomplex_val"):  # interleaved real, imaginary
        flat = flat.view(np.float32 if field == "scomplex_val" else np.float64)
    getattr(out, field).extend(flat.tolist())
    return out


def make_tensor_proto(value: Any, *, typed_values: bool = False) -> TensorProto:
    """numpy array (or nested lists) -> a new TensorProto (see `write_tensor_proto`)."""
    return write_tensor_proto(value, TensorProto(), typed_values=typed_values)


def make_ndarray(proto: TensorProto) -> np.ndarray:
    """TensorProto -> numpy, from tensor_content or the typed *_val field (TF's fill-with-last rule)."""
    if proto.tensor_shape.unknown_rank:
        raise ValueError("cannot decode a tensor of unknown rank")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    count = int(np.prod(shape, dtype=np.int64))
    entry = _BY_ENUM.get(proto.dtype)
    if entry is None:
        raise TypeError(f"cannot decode a tensor of dtype {dtype_name(proto.dtype)}")
    dtype, field = entry
    if proto.tensor_content and dtype != _STRING:
        return np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    values = getattr(proto, field)
    if dtype == _STRING:
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    elif field == "half_val":
        flat = np.asarray(values, dtype=np.uint16).view(np.float16)
    elif field in ("scomplex_val", "dcomplex_val"):
        flat = np.asarray(values, dtype=np.float32 if field == "scomplex_val" else np.float64).view(dtype)
    else:
        flat = np.asarray(values, dtype=dtype)
    if flat.size == count:
        return flat.reshape(shape)
    if flat.size == 0:
        return np.zeros(shape, dtype=dtype) if dtype != _STRING else np.full(shape, b"", dtype=object)
    if flat.size < count:  # TF repeats the last value to fill the tensor
        return np.concatenate([flat, np.repeat(flat[-1:], count - flat.size)]).reshape(shape)
    raise ValueError(f"tensor has {flat.size} values for shape {list(shape)}")
