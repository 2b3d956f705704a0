"""TF Serving's gRPC API as Python code of ours, with no TensorFlow and no .proto text.

The .proto sources of TF Serving and TF are in no installed wheel, but the `*_pb2` modules of
`tensorflow` and `tensorflow-serving-api` carry their FileDescriptorProtos. Two steps:

  extract  the descriptors of the API files the worker and the model server use, and their
           transitive dependencies, into the committed FileDescriptorSet `tfserving.binpb`
           (needs tensorflow and tensorflow-serving-api installed: a development venv);
  code     `grpc_tools.protoc --descriptor_set_in` from that set into
           `moodtunes_tfserving/proto/`, imports rewritten into that package.

`make proto` runs both; a test checks the committed set and code are current.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DESCRIPTOR_SET = HERE / "tfserving.binpb"
PACKAGE = "moodtunes_tfserving.proto"
OUT_DIR = REPO_ROOT / "packages" / "moodtunes-tfserving" / Path(*PACKAGE.split("."))

# TF Serving's API files (ModelService brings ModelServerConfig, which the deploy tests parse);
# everything they import comes along.
ROOTS = (
    "tensorflow_serving/apis/prediction_service.proto",
    "tensorflow_serving/apis/model_service.proto",
    "tensorflow_serving/apis/get_model_metadata.proto",
    "tensorflow_serving/apis/get_model_status.proto",
    "tensorflow_serving/apis/predict.proto",
    # the records of assets.extra/tf_serving_warmup_requests (written by the export, replayed on load)
    "tensorflow_serving/apis/prediction_log.proto",
)
SERVICES = ("tensorflow_serving/apis/prediction_service.proto",)  # gRPC stubs: the one service we call
WELL_KNOWN = "google/protobuf/"  # shipped by protobuf itself: in the set for protoc, never generated
_IMPORT = re.compile(r"^from (tensorflow|tensorflow_serving|xla)((?:\.\w+)*) import ", re.MULTILINE)


def extract() -> bytes:
    """The FileDescriptorSet of ROOTS and their dependencies, dependencies first, from the
    descriptors the installed TF / TF Serving modules register (their exact serialized bytes)."""
    import importlib

    from google.protobuf import descriptor_pb2, descriptor_pool

    for root in ROOTS:
        importlib.import_module(root.removesuffix(".proto").replace("/", ".") + "_pb2")
    pool = descriptor_pool.Default()
    ordered: dict[str, bytes] = {}

    def visit(name: str) -> None:
        if name in ordered:
            return
        file = pool.FindFileByName(name)
        for dep in file.dependencies:
            visit(dep.name)
        ordered[name] = file.serialized_pb

    for root in ROOTS:
        visit(root)
    fds = descriptor_pb2.FileDescriptorSet()
    for serialized in ordered.values():
        fds.file.add().MergeFromString(serialized)
    return fds.SerializeToString(deterministic=True)


def _protoc(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", *args], check=True)


def generate(out_dir: Path, descriptor_set: Path = DESCRIPTOR_SET) -> list[Path]:
    """Writes the generated modules (and package __init__ files) under out_dir; returns them."""
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    names = [f.name for f in fds.file if not f.name.startswith(WELL_KNOWN)]
    out_dir.mkdir(parents=True, exist_ok=True)
    _protoc(f"--descriptor_set_in={descriptor_set}", f"--python_out={out_dir}", *names)
    _protoc(f"--descriptor_set_in={descriptor_set}", f"--grpc_python_out={out_dir}", *SERVICES)
    written = []
    for path in sorted(out_dir.rglob("*_pb2*.py")):
        text = _IMPORT.sub(lambda m: f"from {PACKAGE}.{m[1]}{m[2]} import ", path.read_text())
        leftover = re.search(r"^(from|import) (tensorflow|tensorflow_serving|xla)\b.*", text, re.MULTILINE)
        if leftover:
            raise RuntimeError(f"{path}: import not rewritten: {leftover[0]}")
        path.write_text(text)
        written.append(path)
    for folder in sorted({p.parent for p in written}):
        while folder != out_dir.parent:
            init = folder / "__init__.py"
            if not init.exists():
                init.write_text("")
            written.append(init)
            folder = folder.parent
    return sorted(set(written))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ext = sub.add_parser("extract", help="write the FileDescriptorSet from the installed TF packages")
    ext.add_argument("--out", type=Path, default=DESCRIPTOR_SET)
    code = sub.add_parser("code", help="generate the Python modules from the FileDescriptorSet")
    code.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    if args.command == "extract":
        data = extract()
        args.out.write_bytes(data)
        print(f"{args.out}: {len(data)} bytes")
    else:
        with tempfile.TemporaryDirectory() as tmp:  # replace the whole tree: no stale modules
            files = generate(Path(tmp))
            shutil.rmtree(args.out, ignore_errors=True)
            shutil.copytree(tmp, args.out)
        print(f"{args.out}: {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
