"""The generated TF Serving API: current with its FileDescriptorSet, the set current with the
installed TensorFlow, and both loadable in one process with TensorFlow's own modules."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from moodtunes.config import REPO_ROOT

SCRIPT = REPO_ROOT / "proto" / "tfserving" / "generate.py"
DESCRIPTOR_SET = REPO_ROOT / "proto" / "tfserving" / "tfserving.binpb"
COMMITTED = REPO_ROOT / "packages" / "moodtunes-tfserving" / "moodtunes_tfserving" / "proto"


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.py"))}


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_generated_code_matches_the_descriptor_set(tmp_path):
    run(str(SCRIPT), "code", "--out", str(tmp_path / "proto"))
    fresh, committed = tree(tmp_path / "proto"), tree(COMMITTED)
    assert sorted(fresh) == sorted(committed), "generated modules differ: run `make proto`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated modules {stale}: run `make proto`"
    assert "tensorflow_serving/apis/prediction_service_pb2_grpc.py" in fresh


def test_generated_code_imports_only_this_package():
    """No generated module imports `tensorflow*` or `xla` at top level (which would load TF)."""
    for name, text in tree(COMMITTED).items():
        for line in text.decode().splitlines():
            if line.startswith(("import ", "from ")):
                assert line.startswith(
                    (
                        "from moodtunes_tfserving.proto.",
                        "from google.protobuf",
                        "import grpc",
                        "import warnings",
                    )
                ), f"{name}: {line}"


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow_serving") is None,
    reason="needs tensorflow + tensorflow-serving-api (the development venv)",
)
def test_descriptor_set_matches_the_installed_tensorflow(tmp_path):
    """Byte-identical descriptors are what lets the generated modules and TF's own share the
    default descriptor pool (the model server, training and tests import both)."""
    run(str(SCRIPT), "extract", "--out", str(tmp_path / "set.binpb"))
    assert (tmp_path / "set.binpb").read_bytes() == DESCRIPTOR_SET.read_bytes(), (
        "proto/tfserving/tfserving.binpb differs from the installed TensorFlow's: run `make proto`"
    )


SAME_PROCESS = """
import sys
from google.protobuf import descriptor_pb2, descriptor_pool

def ours():
    from moodtunes_tfserving.proto.tensorflow_serving.apis import predict_pb2
    from moodtunes_tfserving.proto.tensorflow.core.framework import tensor_pb2
    return predict_pb2, tensor_pb2

def tensorflows():
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    from tensorflow.core.framework import tensor_pb2
    return tf, predict_pb2, tensor_pb2

if sys.argv[1] == "ours-first":
    our_predict, our_tensor = ours()
    tf, tf_predict, tf_tensor = tensorflows()
else:
    tf, tf_predict, tf_tensor = tensorflows()
    our_predict, our_tensor = ours()
# One descriptor, hence one message class, whichever module registered it first.
assert our_tensor.TensorProto is tf_tensor.TensorProto
assert our_predict.PredictRequest is tf_predict.PredictRequest

from moodtunes_tfserving.tensors import make_ndarray, make_tensor_proto
request = our_predict.PredictRequest()
request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0, 2.0]]))
assert make_ndarray(request.inputs["x"]).tolist() == [[1.0, 2.0]]
assert tf.make_ndarray(make_tensor_proto([[3.0]])).tolist() == [[3.0]]

# The same file name with other content is refused: why the descriptor set must stay current.
changed = descriptor_pb2.FileDescriptorProto()
our_tensor.DESCRIPTOR.CopyToProto(changed)
changed.message_type[0].field.add(name="extra_field", number=999, type=9, label=1)
try:
    descriptor_pool.Default().Add(changed)
except (TypeError, ValueError) as exc:
    print("refused:", exc)
else:
    raise AssertionError("a conflicting tensor.proto was accepted")
"""


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow_serving") is None,
    reason="needs tensorflow + tensorflow-serving-api (the development venv)",
)
@pytest.mark.parametrize("order", ["ours-first", "tensorflow-first"])
def test_generated_modules_share_the_pool_with_tensorflows(order):
    result = run("-c", textwrap.dedent(SAME_PROCESS), order)
    assert "refused:" in result.stdout
