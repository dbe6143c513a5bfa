"""The distribution installs one import package, `modelgate`, and nothing else at top level."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("gateway", "registry", "monitor")


def test_the_wheel_installs_only_the_modelgate_package(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("modelgate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {
        "modelgate"
    }
    for folder in FOLDERS:
        for init in (ROOT / folder).rglob("__init__.py"):
            assert f"modelgate/{init.relative_to(ROOT).as_posix()}" in names


def test_the_code_imports_its_packages_through_modelgate() -> None:
    """`import gateway` works in a source tree but not once installed: nothing may use it."""
    offenders = []
    for folder in (*FOLDERS, "modelgate", "tests", "loadtest"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                offenders += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {m}"
                    for m in modules
                    if m.split(".")[0] in FOLDERS
                ]
    assert offenders == []


def test_modelgate_version_prints_the_installed_distribution_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modelgate", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"modelgate {version('modelgate')}\n"
