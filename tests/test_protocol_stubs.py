"""The committed protobuf/gRPC stubs are exactly what proto/generate.py makes from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "gateway" / "protocol"


def _generate(out: Path) -> dict[str, str]:
    """Run the generator as a developer would; returns file name -> text of its output."""
    subprocess.run(
        [sys.executable, str(REPO / "proto" / "generate.py"), "--out", str(out)],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    return _stubs(out)


def _stubs(folder: Path) -> dict[str, str]:
    return {
        path.name: path.read_text(encoding="utf-8")
        for path in sorted(folder.iterdir())
        if path.is_file() and path.suffix in (".py", ".pyi")
    }


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    fresh = _generate(tmp_path)
    committed = _stubs(COMMITTED)
    assert "grpc_predict_v2_pb2_grpc.py" in fresh

    hint = "stubs are stale: run `python proto/generate.py` and commit gateway/protocol"
    assert sorted(committed) == sorted(fresh), hint
    changed = [name for name, text in fresh.items() if committed[name] != text]
    assert not changed, f"{hint} (differs: {', '.join(changed)})"


def test_generation_is_deterministic(tmp_path: Path) -> None:
    assert _generate(tmp_path / "a") == _generate(tmp_path / "b")
