"""Generate the Python protobuf/gRPC stubs of proto/*.proto into a package.

Usage: python proto/generate.py [--out DIR]      (default: gateway/protocol)

Writes `<name>_pb2.py` and `<name>_pb2.pyi` for every .proto file, `<name>_pb2_grpc.py` for
those that declare a service, and the package's `__init__.py`; removes generated files whose
.proto is gone. Two rewrites of protoc's output:

- its top-level imports between the generated modules (`import model_config_pb2`) become
  package-relative, so the stubs live inside the `gateway` package;
- the descriptors go into the package's own descriptor pool instead of the process-wide
  default one. Triton's client library registers the same file names and message names
  (`model_config.proto`, `inference.ModelInferRequest`) in the default pool, and protobuf
  refuses a second definition, so without this the gateway and tritonclient could not be
  imported into one process.

The output depends only on the .proto files and the grpcio-tools version, so a test can
compare a fresh generation with the committed stubs.

Which grpcio-tools: the one whose version is pyproject.toml's grpcio minimum (1.66.2 now). The
stubs refuse a protobuf runtime older than the protoc that grpcio-tools bundles (1.66.2 writes
gencode for protobuf 5.27.2, pyproject's protobuf minimum) and a grpcio older than grpcio-tools;
a newer grpcio-tools would raise both floors. So regenerate with that version, in its own
virtualenv (it requires protobuf<6):

    nox -s stubs      (or: pip install grpcio-tools==1.66.2 && python proto/generate.py)

To move the floor, raise the grpc minimums in pyproject.toml together (grpcio,
grpcio-health-checking, grpcio-reflection), regenerate, and set the protobuf minimum to the
"Protobuf Python Version" in the new stubs' header; tests/test_protocol_stubs.py checks both.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent
DEFAULT_OUT = REPO_ROOT / "gateway" / "protocol"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
INIT_TEXT = '''"""Protobuf and gRPC stubs generated from proto/ by proto/generate.py: do not edit.

`POOL` holds their descriptors (pass it to tools that look descriptors up, such as
`grpc_reflection.v1alpha.reflection.enable_server_reflection(..., pool=POOL)`).
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
'''
DEFAULT_POOL_CALL = "_descriptor_pool.Default().AddSerializedFile("
PRIVATE_POOL_CALL = "_POOL.AddSerializedFile("
POOL_IMPORT = "from . import POOL as _POOL\n"


def _proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def _relative_imports(text: str, modules: set[str]) -> str:
    """Turn `import x_pb2 as y` / `from x_pb2 import z` of our own modules package-relative."""

    def plain(match: re.Match[str]) -> str:
        module, rest = match.group(1), match.group(2)
        return f"from . import {module}{rest}" if module in modules else match.group(0)

    def from_(match: re.Match[str]) -> str:
        module = match.group(1)
        return f"from .{module} import" if module in modules else match.group(0)

    text = re.sub(r"^import (\w+)((?: as \w+)?)$", plain, text, flags=re.MULTILINE)
    return re.sub(r"^from (\w+) import", from_, text, flags=re.MULTILINE)


def _private_pool(text: str) -> str:
    """Register a `_pb2.py` module's descriptors in the package's `POOL`."""
    if text.count(DEFAULT_POOL_CALL) != 1:
        raise SystemExit("unexpected protoc output: cannot find the descriptor pool call")
    marker = "# @@protoc_insertion_point(imports)\n"
    if marker not in text:
        raise SystemExit("unexpected protoc output: no imports insertion point")
    text = text.replace(marker, marker + POOL_IMPORT, 1)
    return text.replace(DEFAULT_POOL_CALL, PRIVATE_POOL_CALL)


def _has_service(proto: Path) -> bool:
    return re.search(r"^service\s", proto.read_text(encoding="utf-8"), re.MULTILINE) is not None


def generate(out: Path) -> list[Path]:
    """Generate the stubs into `out` (created if needed); returns the files written."""
    protos = _proto_files()
    if not protos:
        raise SystemExit(f"no .proto files in {PROTO_DIR}")
    services = {p.stem for p in protos if _has_service(p)}
    modules = {f"{p.stem}_pb2" for p in protos} | {f"{stem}_pb2_grpc" for stem in services}
    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"--proto_path={PROTO_DIR}",
            f"--proto_path={well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(p.name for p in protos),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        generated = {}
        for path in sorted(Path(tmp).iterdir()):
            if path.stem not in modules:
                continue
            text = _relative_imports(path.read_text(encoding="utf-8"), modules)
            generated[path.name] = _private_pool(text) if path.name.endswith("_pb2.py") else text
    generated["__init__.py"] = INIT_TEXT

    out.mkdir(parents=True, exist_ok=True)
    for stale in sorted(out.iterdir()):
        if stale.name.endswith(GENERATED_SUFFIXES) and stale.name not in generated:
            stale.unlink()
    written = []
    for name, text in generated.items():
        path = out / name
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output package dir")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
