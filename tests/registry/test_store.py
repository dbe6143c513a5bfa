"""The embedded registry: versions, stages and their rules, the audit trail, integrity."""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import modelzoo
from modelgate.monitor.profile import build_profile
from modelgate.registry.errors import (
    ArtifactIntegrityError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    SignatureMismatchError,
    UnavailableError,
)
from modelgate.registry.signature import InvalidModelError
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import ModelVersion, Stage, Transition


def _stages(store: RegistryStore, name: str) -> list[tuple[Stage, float | None]]:
    return [(v.stage, v.traffic) for v in store.list_versions(name)]


def _moves(history: list[Transition]) -> list[tuple[int, str, str, float | None]]:
    return [(t.version, t.from_stage.value, t.to_stage.value, t.traffic) for t in history]


@pytest.fixture
def three(tmp_path: Path, model_files: dict[str, bytes]) -> RegistryStore:
    """A store with versions 1-3 of model `m`, all in stage none."""
    store = RegistryStore(tmp_path / "store", create=True)
    for _ in range(3):
        store.register("m", model_files["classifier"])
    return store


def test_versions_are_numbered_per_model(tmp_path: Path, model_files: dict[str, bytes]) -> None:
    store = RegistryStore(tmp_path, create=True)
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
    assert store.get("a", 2) == second
    assert store.history() == []


def test_signature_is_read_from_the_onnx_graph(
    tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    version = RegistryStore(tmp_path, create=True).register("c", model_files["classifier"])
    assert [(s.name, s.datatype, s.shape) for s in version.inputs] == [("input", "FP32", (-1, 8))]
    assert [s.name for s in version.outputs] == ["label", "probabilities"]


def test_register_in_a_stage_is_audited_from_none(
    tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    store = RegistryStore(tmp_path, create=True)
    store.register("a", model_files["classifier"], stage=Stage.PRODUCTION, actor="ci")
    store.register("a", model_files["classifier"], stage=Stage.CANARY, traffic=5, actor="ci")
    store.register("a", model_files["classifier"], stage=Stage.PRODUCTION, actor="bob")
    assert _stages(store, "a") == [
        (Stage.ARCHIVED, None),
        (Stage.CANARY, 5.0),
        (Stage.PRODUCTION, None),
    ]
    history = store.history("a")
    assert _moves(history) == [
        (1, "none", "production", None),
        (2, "none", "canary", 5.0),
        (1, "production", "archived", None),
        (3, "none", "production", None),
    ]
    assert [t.actor for t in history] == ["ci", "ci", "bob", "bob"]
    assert history[2].reason == "replaced by version 3"
    assert history[2].at == history[3].at
    assert all(a.at <= b.at for a, b in itertools.pairwise(history))


def test_promotion_archives_the_previous_production_version_or_keeps_it_in_staging(
    three: RegistryStore,
) -> None:
    three.transition("m", 1, Stage.PRODUCTION, actor="alice")
    promoted = three.transition("m", 2, Stage.PRODUCTION, actor="alice", reason="better")
    assert promoted.stage is Stage.PRODUCTION
    assert _stages(three, "m")[:2] == [(Stage.ARCHIVED, None), (Stage.PRODUCTION, None)]
    three.transition("m", 3, Stage.PRODUCTION, actor="bob", keep=True)
    assert _stages(three, "m") == [
        (Stage.ARCHIVED, None),
        (Stage.STAGING, None),
        (Stage.PRODUCTION, None),
    ]
    history = three.history("m")
    assert _moves(history) == [
        (1, "none", "production", None),
        (1, "production", "archived", None),
        (2, "none", "production", None),
        (2, "production", "staging", None),
        (3, "none", "production", None),
    ]
    assert history[1].reason == "replaced by version 2: better"
    assert history[2].reason == "better"
    assert [t.actor for t in history] == ["alice", "alice", "alice", "bob", "bob"]


def test_canaries_need_a_share_and_their_shares_add_up_to_at_most_100(
    three: RegistryStore,
) -> None:
    with pytest.raises(InvalidRequestError, match="canary needs a traffic share"):
        three.transition("m", 1, Stage.CANARY)
    three.transition("m", 1, Stage.CANARY, traffic=60)
    three.transition("m", 2, Stage.CANARY, traffic=40)  # A/B/n: several canaries at once
    before = (three.generation(), three.history(), three.list_versions())
    with pytest.raises(ConflictError, match=r"add up to 100\.5%"):
        three.transition("m", 3, Stage.CANARY, traffic=0.5)
    assert (three.generation(), three.history(), three.list_versions()) == before
    # A canary's own share does not count against it when it is changed.
    three.transition("m", 1, Stage.CANARY, traffic=50, reason="less")
    three.transition("m", 3, Stage.CANARY, traffic=10)
    assert _stages(three, "m") == [
        (Stage.CANARY, 50.0),
        (Stage.CANARY, 40.0),
        (Stage.CANARY, 10.0),
    ]
    assert _moves(three.history("m"))[2] == (1, "canary", "canary", 50.0)


def test_shadow_mirrors_everything_unless_told_otherwise_and_leaving_clears_the_share(
    three: RegistryStore,
) -> None:
    assert three.transition("m", 1, Stage.SHADOW).traffic == 100.0
    assert three.transition("m", 2, Stage.SHADOW, traffic=25).traffic == 25.0
    assert three.transition("m", 2, Stage.PRODUCTION).traffic is None
    assert three.transition("m", 1, Stage.STAGING).traffic is None
    assert _stages(three, "m")[:2] == [(Stage.STAGING, None), (Stage.PRODUCTION, None)]


ECHO_MISSES = (
    "input 'input' is missing (version 2 has 'x'); output 'label' is missing (version 2 has "
    "'y'); output 'probabilities' is missing (version 2 has 'y')"
)


@pytest.fixture
def renamed(tmp_path: Path, model_files: dict[str, bytes]) -> RegistryStore:
    """`m`: v1 the classifier in production (input `input`), v2 a model taking `x`."""
    store = RegistryStore(tmp_path / "renamed", create=True)
    store.register("m", model_files["classifier"], stage=Stage.PRODUCTION, actor="ci")
    store.register("m", modelzoo.echo("FP32", width=modelzoo.FEATURES), actor="ci")
    return store


@pytest.mark.parametrize("stage", [Stage.CANARY, Stage.SHADOW, Stage.PRODUCTION])
def test_a_version_that_does_not_fit_production_is_refused_with_each_difference(
    renamed: RegistryStore, stage: Stage
) -> None:
    before = (renamed.generation(), renamed.list_versions(), renamed.history())
    traffic = 10 if stage is Stage.CANARY else None
    with pytest.raises(SignatureMismatchError) as caught:
        renamed.transition("m", 2, stage, traffic=traffic, reason="try it")
    assert str(caught.value).startswith(
        "the signature of version 2 of 'm' differs from production version 1's "
        f"(production != version 2): {ECHO_MISSES}. If clients are ready for version 2, allow "
        "the change with a reason (--allow-signature-change --reason ...,"
    )
    assert caught.value.code == "signature_mismatch"
    # Registering straight into the stage is the same transition, refused the same way.
    echo = renamed.read_artifact(renamed.get("m", 2))
    with pytest.raises(SignatureMismatchError, match="input 'input' is missing"):
        renamed.register("m", echo, stage=stage, traffic=traffic)
    assert (renamed.generation(), renamed.list_versions(), renamed.history()) == before


def test_stages_that_take_no_live_traffic_are_not_compared(renamed: RegistryStore) -> None:
    """Staging serves only requests that name the version; none and archived serve nothing."""
    for stage in (Stage.STAGING, Stage.ARCHIVED, Stage.NONE):
        assert renamed.transition("m", 2, stage).stage is stage
    assert "modelgate.signature_change" not in renamed.get("m", 2).tags


def test_the_first_production_version_sets_the_signature(
    tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    store = RegistryStore(tmp_path, create=True)
    store.register("m", modelzoo.echo("FP32"), stage=Stage.CANARY, traffic=5)
    store.register("m", model_files["classifier"], stage=Stage.PRODUCTION)
    assert _stages(store, "m") == [(Stage.CANARY, 5.0), (Stage.PRODUCTION, None)]
    with pytest.raises(SignatureMismatchError, match="version 1 of 'm' differs"):
        store.transition("m", 1, Stage.CANARY, traffic=10)


def test_an_allowed_change_is_audited_with_what_changed_and_why(
    renamed: RegistryStore,
) -> None:
    with pytest.raises(InvalidRequestError, match="needs a reason for the audit trail"):
        renamed.transition("m", 2, Stage.CANARY, traffic=10, allow_signature_change=True)
    canary = renamed.transition(
        "m", 2, Stage.CANARY, traffic=10, actor="ana", reason="clients send x from today",
        allow_signature_change=True,
    )  # fmt: skip
    assert (canary.stage, canary.traffic) == (Stage.CANARY, 10.0)
    # The tag tells gateways, whatever the registry, that the difference was allowed.
    assert canary.tags == {"modelgate.signature_change": "clients send x from today"}
    last = renamed.history("m")[-1]
    assert (last.version, last.to_stage, last.actor) == (2, Stage.CANARY, "ana")
    assert last.reason == (f"signature change allowed ({ECHO_MISSES}): clients send x from today")
    # Each move of a version that does not fit is its own decision.
    with pytest.raises(SignatureMismatchError):
        renamed.transition("m", 2, Stage.CANARY, traffic=50)
    registered = renamed.register(
        "m", renamed.read_artifact(canary), stage=Stage.SHADOW, reason="mirror it too",
        allow_signature_change=True,
    )  # fmt: skip
    assert registered.tags == {"modelgate.signature_change": "mirror it too"}
    assert renamed.history("m")[-1].reason.endswith(": mirror it too")
    # A version that fits needs no allowance; giving one changes nothing.
    fits = renamed.register(
        "m", renamed.read_artifact(renamed.get("m", 1)), stage=Stage.CANARY, traffic=5,
        reason="same model", allow_signature_change=True,
    )  # fmt: skip
    assert fits.tags == {}
    assert renamed.history("m")[-1].reason == "same model"


def test_an_allowed_promotion_archives_canaries_and_shadows_that_no_longer_fit(
    renamed: RegistryStore, model_files: dict[str, bytes]
) -> None:
    echo = renamed.read_artifact(renamed.get("m", 2))
    renamed.register("m", model_files["classifier"], stage=Stage.CANARY, traffic=10)  # v3
    renamed.register("m", model_files["classifier"], stage=Stage.SHADOW)  # v4
    renamed.register(  # v5: takes `x` like v2, allowed beside v1
        "m", echo, stage=Stage.CANARY, traffic=20, reason="x", allow_signature_change=True
    )
    renamed.transition(
        "m", 2, Stage.PRODUCTION, actor="ana", reason="clients moved to x",
        allow_signature_change=True,
    )  # fmt: skip
    assert _stages(renamed, "m") == [
        (Stage.ARCHIVED, None),
        (Stage.PRODUCTION, None),
        (Stage.ARCHIVED, None),
        (Stage.ARCHIVED, None),
        (Stage.CANARY, 20.0),  # fits the new production version
    ]
    history = renamed.history("m")[-4:]
    assert _moves(history) == [
        (1, "production", "archived", None),
        (3, "canary", "archived", None),
        (4, "shadow", "archived", None),
        (2, "none", "production", None),
    ]
    assert history[1].reason == (
        "does not fit the signature of production version 2: input 'x' is missing (version 3 "
        "has 'input'); output 'y' is missing (version 3 has 'label', 'probabilities')"
    )
    assert history[2].reason.startswith("does not fit the signature of production version 2:")
    assert history[3].reason.startswith("signature change allowed (input 'input' is missing")
    assert {t.actor for t in history} == {"ana"}


@pytest.mark.parametrize(
    ("stage", "traffic", "message"),
    [
        (Stage.CANARY, -1, "between 0 and 100"),
        (Stage.CANARY, 100.01, "between 0 and 100"),
        (Stage.SHADOW, float("nan"), "between 0 and 100"),
        (Stage.PRODUCTION, 50, "only for canary and shadow"),
        (Stage.STAGING, 0, "only for canary and shadow"),
    ],
)
def test_bad_traffic_shares_are_refused_and_change_nothing(
    three: RegistryStore, stage: Stage, traffic: float, message: str
) -> None:
    before = (three.generation(), three.list_versions())
    with pytest.raises(InvalidRequestError, match=message):
        three.transition("m", 1, stage, traffic=traffic)
    with pytest.raises(InvalidRequestError, match=message):
        three.register("m", three.read_artifact(before[1][0]), stage=stage, traffic=traffic)
    assert (three.generation(), three.list_versions()) == before
    assert three.history() == []


def test_unknown_models_versions_and_names_are_clear_errors(three: RegistryStore) -> None:
    before = three.generation()
    with pytest.raises(NotFoundError, match="no version 7 of model 'm'"):
        three.transition("m", 7, Stage.STAGING)
    with pytest.raises(NotFoundError, match="unknown model 'ghost'"):
        three.transition("ghost", 1, Stage.STAGING)
    with pytest.raises(NotFoundError, match="no version 7"):
        three.get("m", 7)
    with pytest.raises(InvalidRequestError, match="invalid model name"):
        three.register("a/b", b"")
    with pytest.raises(InvalidRequestError, match="not a Stage"):
        three.transition("m", 1, "production")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown stage"):
        Stage.parse("live")
    assert three.generation() == before


def test_generation_changes_with_every_write_and_only_then(
    tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    store = RegistryStore(tmp_path, create=True)
    seen = [store.generation()]
    store.register("a", model_files["classifier"])
    seen.append(store.generation())
    store.transition("a", 1, Stage.STAGING)
    seen.append(store.generation())
    store.transition("a", 1, Stage.STAGING)  # same stage: still a write, still audited
    seen.append(store.generation())
    assert len(set(seen)) == 4
    store.list_versions()
    store.history()
    with pytest.raises(NotFoundError):
        store.transition("a", 2, Stage.STAGING)
    assert store.generation() == seen[-1]
    # Another process (a gateway) sees the change through its own store object.
    assert RegistryStore(tmp_path).generation() == seen[-1]


def test_the_unique_index_stops_a_second_production_version_from_any_writer(
    three: RegistryStore,
) -> None:
    three.transition("m", 1, Stage.PRODUCTION)
    with (
        sqlite3.connect(three.root / "registry.db") as db,
        pytest.raises(sqlite3.IntegrityError, match="UNIQUE"),
    ):
        db.execute("UPDATE model_versions SET stage = 'production' WHERE version = 2")
    assert _stages(three, "m")[:2] == [(Stage.PRODUCTION, None), (Stage.NONE, None)]


def _promote_repeatedly(root: str, versions: list[int], rounds: int) -> None:
    store = RegistryStore(root)
    for i in range(rounds):
        for version in versions:
            store.transition(
                "m", version, Stage.PRODUCTION, actor=f"writer{version}", keep=bool(i % 2)
            )


def test_two_writer_processes_never_make_two_production_versions(three: RegistryStore) -> None:
    context = multiprocessing.get_context("spawn")
    writers = [
        context.Process(target=_promote_repeatedly, args=(str(three.root), versions, 15))
        for versions in ([1, 2], [3, 2])
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
    assert [w.exitcode for w in writers] == [0, 0]
    final = three.list_versions("m")
    assert [v.stage for v in final].count(Stage.PRODUCTION) == 1
    # The audit trail replays to exactly the stages the registry holds.
    replayed = {v.version: Stage.NONE for v in final}
    history = three.history("m")
    for t in history:
        assert replayed[t.version] is t.from_stage
        replayed[t.version] = t.to_stage
    assert replayed == {v.version: v.stage for v in final}
    promotions = [t for t in history if t.to_stage is Stage.PRODUCTION]
    assert len(promotions) == 2 * 2 * 15
    assert int(three.generation()) == 3 + 2 * 2 * 15


def test_a_writer_that_cannot_get_the_lock_fails_cleanly(
    tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    store = RegistryStore(tmp_path, create=True, lock_timeout=0.2)
    store.register("a", model_files["classifier"])
    other = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(UnavailableError, match="another process is writing"):
            store.register("a", model_files["lookup"])
        with pytest.raises(UnavailableError):
            store.transition("a", 1, Stage.PRODUCTION)
        assert [v.version for v in store.list_versions()] == [1]  # readers are not blocked
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.transition("a", 1, Stage.PRODUCTION).stage is Stage.PRODUCTION
    assert _moves(store.history()) == [(1, "none", "production", None)]


def test_not_an_onnx_model_is_refused(tmp_path: Path) -> None:
    store = RegistryStore(tmp_path, create=True)
    with pytest.raises(InvalidModelError, match="not an ONNX model"):
        store.register("a", b"definitely not onnx")
    assert store.list_versions() == []


def test_an_onnx_file_that_does_not_load_is_refused(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    graph = helper.make_graph([helper.make_node("NoSuchOperator", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    store = RegistryStore(tmp_path, create=True)
    with pytest.raises(InvalidModelError, match="does not load"):
        store.register("a", model.SerializeToString())
    assert store.list_versions() == []
    assert [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()] == []  # nor a copy
    assert onnx.load_from_string(model.SerializeToString())  # it parses; only ORT refuses it


def test_a_tampered_artifact_is_detected_and_a_new_registration_repairs_it(
    tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    store = RegistryStore(tmp_path, create=True)
    version = store.register("a", model_files["classifier"])
    artifact = tmp_path / "artifacts" / "sha256" / version.sha256
    artifact.write_bytes(artifact.read_bytes()[:-1] + b"\0")
    with pytest.raises(ArtifactIntegrityError, match="does not match its sha256"):
        store.read_artifact(version)
    store.register("a", model_files["classifier"])
    assert store.read_artifact(version) == model_files["classifier"]
    artifact.unlink()
    with pytest.raises(NotFoundError, match="is missing"):
        store.read_artifact(version)


def test_artifact_writes_are_atomic(
    tmp_path: Path, model_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RegistryStore(tmp_path, create=True)
    folder = tmp_path / "artifacts" / "sha256"

    def crash(src: Any, dst: Any) -> None:
        raise OSError("disk gone")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="disk gone"):
            store.register("a", model_files["classifier"])
    assert list(folder.iterdir()) == []  # neither the artifact nor a temp file
    assert store.list_versions() == []
    version = store.register("a", model_files["classifier"])
    assert [p.name for p in folder.iterdir()] == [version.sha256]


def test_a_reference_profile_is_stored_with_the_version(
    tmp_path: Path, model_files: dict[str, bytes], rng: np.random.Generator
) -> None:
    store = RegistryStore(tmp_path, create=True)
    profile = build_profile({"input": rng.normal(size=(50, 8))}, {}).to_json()
    version = store.register("a", model_files["classifier"], reference=profile)
    assert version.reference == profile
    assert RegistryStore(tmp_path).get("a", 1).reference == profile
    assert ModelVersion.from_json(version.to_json()) == version
    with pytest.raises(InvalidRequestError, match="unsupported reference profile format"):
        store.register("a", model_files["classifier"], reference={"features": []})
    foreign = build_profile({"x": rng.normal(size=(5, 3))}, {}).to_json()
    with pytest.raises(InvalidRequestError, match=r"inputs \['x'\] the model does not have"):
        store.register("a", model_files["classifier"], reference=foreign)
    assert len(store.list_versions()) == 1


def test_a_store_made_by_the_previous_schema_keeps_working(
    tmp_path: Path, model_files: dict[str, bytes]
) -> None:
    old = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
    old.executescript(
        """
        CREATE TABLE model_versions (
            name TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL,
            size INTEGER NOT NULL, stage TEXT NOT NULL, traffic REAL, created REAL NOT NULL,
            inputs TEXT NOT NULL, outputs TEXT NOT NULL, description TEXT NOT NULL DEFAULT '',
            tags TEXT NOT NULL DEFAULT '{}', reference BLOB, PRIMARY KEY (name, version));
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO meta VALUES ('generation', 7);
        INSERT INTO model_versions VALUES
            ('old', 1, 'abc', 3, 'production', NULL, 1.0, '[]', '[]', '', '{}', NULL);
        """
    )
    old.close()
    store = RegistryStore(tmp_path, create=True)
    assert store.generation() == "7"
    assert _stages(store, "old") == [(Stage.PRODUCTION, None)]
    store.register("old", model_files["classifier"], stage=Stage.PRODUCTION)
    assert _stages(store, "old") == [(Stage.ARCHIVED, None), (Stage.PRODUCTION, None)]
    assert len(store.history("old")) == 2
    assert store.generation() == "8"
