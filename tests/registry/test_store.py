"""The embedded registry: versions, signatures, stages and artifact integrity."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from registry.signature import InvalidModelError
from registry.store import ArtifactIntegrityError, RegistryError, RegistryStore
from registry.types import Stage


def test_versions_are_numbered_per_model(tmp_path: Path, model_files: dict[str, bytes]) -> None:
    store = RegistryStore(tmp_path)
    first = store.register("a", model_files["classifier"])
    second = store.register("a", model_files["classifier"], description="again", tags={"k": "v"})
    other = store.register("b", model_files["lookup"])
    assert (first.version, second.version, other.version) == (1, 2, 1)
    assert second.description == "again"
    assert second.tags == {"k": "v"}
    assert first.sha256 == hashlib.sha256(model_files["classifier"]).hexdigest()
    assert first.size == len(model_files["classifier"])
    assert [(v.name, v.version) for v in store.list_versions()] == [("a", 1), ("a", 2), ("b", 1)]
    assert [v.version for v in store.list_versions("a")] == [1, 2]


def test_signature_is_read_from_the_onnx_graph(
    tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    version = RegistryStore(tmp_path).register("c", model_files["classifier"])
    assert [(s.name, s.datatype, s.shape) for s in version.inputs] == [("input", "FP32", (-1, 8))]
    assert [s.name for s in version.outputs] == ["label", "probabilities"]


def test_a_new_production_version_archives_the_old_one(
    tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    store = RegistryStore(tmp_path)
    store.register("a", model_files["classifier"], stage=Stage.PRODUCTION)
    store.register("a", model_files["classifier"], stage=Stage.PRODUCTION)
    assert [v.stage for v in store.list_versions("a")] == [Stage.ARCHIVED, Stage.PRODUCTION]


def test_generation_changes_with_every_write(tmp_path: Path, model_files: dict[str, bytes]) -> None:
    store = RegistryStore(tmp_path)
    before = store.generation()
    store.register("a", model_files["classifier"])
    assert store.generation() != before


def test_not_an_onnx_model_is_refused(tmp_path: Path) -> None:
    store = RegistryStore(tmp_path)
    with pytest.raises(InvalidModelError):
        store.register("a", b"definitely not onnx")
    assert store.list_versions() == []


def test_a_tampered_artifact_is_detected(tmp_path: Path, model_files: dict[str, bytes]) -> None:
    store = RegistryStore(tmp_path)
    version = store.register("a", model_files["classifier"])
    artifact = tmp_path / "artifacts" / "sha256" / version.sha256
    artifact.write_bytes(artifact.read_bytes()[:-1] + b"\0")
    with pytest.raises(ArtifactIntegrityError):
        store.read_artifact(version)


def test_unknown_versions_and_stages_are_clear_errors(tmp_path: Path) -> None:
    store = RegistryStore(tmp_path)
    with pytest.raises(RegistryError, match="no version 3"):
        store.get("a", 3)
    with pytest.raises(ValueError, match="unknown stage"):
        Stage.parse("live")
