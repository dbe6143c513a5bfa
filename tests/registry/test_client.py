"""`open_registry`: which backend a location names, and which locations name none."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelgate.registry.client import local_store, open_registry
from modelgate.registry.errors import LocationError
from modelgate.registry.mlflow import MlflowRegistry
from modelgate.registry.remote import RemoteRegistry
from modelgate.registry.store import RegistryStore


def test_locations_name_a_store_a_registry_server_or_mlflow(tmp_path: Path) -> None:
    RegistryStore(tmp_path / "my store", create=True)
    assert local_store(str(tmp_path / "my store")) == tmp_path / "my store"
    assert local_store(f"file://{tmp_path}/my%20store") == tmp_path / "my store"
    assert local_store(f"FILE://localhost{tmp_path}") == tmp_path
    assert local_store("relative/dir") == Path("relative/dir")
    for url in ("http://h:1", "https://h", "mlflow+http://h:5000", "MLflow+HTTPS://h"):
        assert local_store(url) is None
    store = open_registry(f"file://{tmp_path}/my%20store")
    assert isinstance(store, RegistryStore) and store.list_versions() == []
    with open_registry("mlflow+http://127.0.0.1:1") as mlflow:
        assert isinstance(mlflow, MlflowRegistry) and mlflow.base_url == "http://127.0.0.1:1"
    with open_registry("https://127.0.0.1:1/") as remote:
        assert isinstance(remote, RemoteRegistry) and remote.url == "https://127.0.0.1:1"


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("mlflow://host:5055", "unknown registry location 'mlflow://host:5055' (for MLflow: "),
        ("ftp://x", "unknown registry location 'ftp://x'; use a store directory, file:///"),
        ("file://elsewhere/models", "'file://elsewhere/models': a file:// location is file:///"),
    ],
)
def test_other_locations_are_refused_before_anything_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, location: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LocationError) as refused:
        open_registry(location, create=True)
    assert str(refused.value).startswith(message)
    assert list(tmp_path.iterdir()) == []
