"""Property-based tests of the registry API's JSON endpoints against one real registry
server: registrations, transitions and reads generated from their grammar, and good bodies
mutated byte by byte.

Whatever a request holds, the answer is 2xx or 4xx (or 503, a store that is unavailable),
never another 5xx; the server logs no warning or error for it; and the next read is served.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from conftest import (
    BYTE_EDITS,
    DEEP_VALUES,
    JSON_VALUES,
    Alarms,
    mutated,
    production_recursion_limit,
    serving_registry,
)
from modelgate.monitor.profile import build_profile
from modelgate.registry.server import build_app, load_tokens
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import Stage

WRITER = "fuzz-writer"
AUTH = {"authorization": f"Bearer {WRITER}"}

STAGES = st.sampled_from([s.value for s in Stage] + ["PRODUCTION", "prod", ""])
NAMES = st.sampled_from(["m", "fraud", "other"]) | st.text(min_size=1, max_size=10)
VERSIONS = st.sampled_from(
    ["1", "2", "0", "-1", "x", "99999999999999999999", "\u00b2", "\u0663", " 1", "1_0"]
) | st.text(min_size=1, max_size=6)


@pytest.fixture(scope="module")
def registry(
    tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, bytes]
) -> Iterator[tuple[httpx.Client, str]]:
    """A registry server that holds `m` v1 and an uploaded artifact; a client with a
    writer's token, and that artifact's sha256."""
    root = tmp_path_factory.mktemp("registry")
    store = RegistryStore(root / "store", create=True)
    store.register("m", model_files["classifier"], stage=Stage.PRODUCTION)
    (root / "tokens").write_text(f"fuzz:{WRITER}\n")
    app = build_app(store, root / "incoming", tokens=load_tokens(root / "tokens"))
    model = model_files["echo_fp32"]
    sha = hashlib.sha256(model).hexdigest()
    with (
        serving_registry(app) as url,
        httpx.Client(base_url=f"{url}/api/v1/", headers=AUTH, timeout=60) as client,
    ):
        assert client.put(f"artifacts/{sha}", content=model).status_code == 201
        yield client, sha


def rarely(draw: st.DrawFn) -> bool:
    """True about one time in five: most fields are right, a few are not."""
    return draw(st.integers(0, 4)) == 4


@st.composite
def register_body(draw: st.DrawFn, sha: str) -> Any:
    body: dict[str, Any] = {"sha256": draw(st.text(max_size=70)) if rarely(draw) else sha}
    fields: dict[str, st.SearchStrategy[Any]] = {
        "stage": STAGES,
        "traffic": st.floats() | st.integers(-5, 200) | st.none(),
        "description": st.text(max_size=10),
        "tags": st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
        "reference": JSON_VALUES,
        "actor": st.text(max_size=6),
        "reason": st.text(max_size=6),
        "allow_signature_change": st.booleans(),
    }
    for key in draw(st.sets(st.sampled_from(sorted(fields)), max_size=3)):
        body[key] = draw(JSON_VALUES if rarely(draw) else fields[key])
    if rarely(draw):
        body[draw(st.text(max_size=6))] = draw(JSON_VALUES)
    return draw(JSON_VALUES) if rarely(draw) and rarely(draw) else body


@st.composite
def transition_body(draw: st.DrawFn) -> Any:
    body: dict[str, Any] = {"stage": draw(STAGES)}
    fields: dict[str, st.SearchStrategy[Any]] = {
        "traffic": st.floats() | st.integers(-5, 200) | st.none(),
        "keep": st.booleans(),
        "reason": st.text(max_size=6),
        "actor": st.text(max_size=6),
        "allow_signature_change": st.booleans(),
    }
    for key in draw(st.sets(st.sampled_from(sorted(fields)), max_size=3)):
        body[key] = draw(JSON_VALUES if rarely(draw) else fields[key])
    if rarely(draw):
        del body["stage"]
    return draw(JSON_VALUES) if rarely(draw) and rarely(draw) else body


def assert_handled(
    client: httpx.Client, alarms: Alarms, method: str, path: str, body: bytes | None = None
) -> None:
    alarms.clear()
    with production_recursion_limit():
        r = client.request(method, path, content=body)
    event(f"HTTP {r.status_code}")
    assert r.status_code < 500 or r.status_code == 503, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert "error" in r.json()
    alarms.assert_none()
    answer = client.get("models/m/versions/1")
    assert answer.status_code == 200, answer.text
    assert (answer.json()["name"], answer.json()["version"]) == ("m", 1)


def _path(*segments: str) -> str:
    return "/".join(quote(s, safe="") for s in segments)


def _json(doc: Any) -> bytes:
    return json.dumps(doc).encode()


@given(name=NAMES, data=st.data())
def test_register(
    registry: tuple[httpx.Client, str], alarms: Alarms, name: str, data: st.DataObject
) -> None:
    client, sha = registry
    body = _json(data.draw(register_body(sha)))
    assert_handled(client, alarms, "POST", _path("models", name, "versions"), body)


@given(name=NAMES, version=VERSIONS, body=transition_body())
def test_transition(
    registry: tuple[httpx.Client, str], alarms: Alarms, name: str, version: str, body: Any
) -> None:
    client, _ = registry
    path = _path("models", name, "versions", version, "transition")
    assert_handled(client, alarms, "POST", path, _json(body))


REGISTER_FIELDS = ["sha256", "stage", "traffic", "description", "tags", "reference", "actor"]
TRANSITION_FIELDS = ["stage", "traffic", "keep", "reason", "actor", "allow_signature_change"]


@given(
    transition=st.booleans(),
    key=st.sampled_from([*REGISTER_FIELDS, *TRANSITION_FIELDS, "unknown"]),
    value=JSON_VALUES | DEEP_VALUES,
)
def test_field_values(
    registry: tuple[httpx.Client, str], alarms: Alarms, transition: bool, key: str, value: Any
) -> None:
    """Any value in any field, nested 1,000 deep too: an error names the field, never
    formats the value (unbounded, or recursing past Python's limit)."""
    client, sha = registry
    if transition:
        path, body = "models/m/versions/1/transition", {"stage": "production"}
    else:
        path, body = "models/fraud/versions", {"sha256": sha, "stage": "none"}
    body[key] = value
    assert_handled(client, alarms, "POST", path, _json(body))


def _profile() -> dict[str, Any]:
    """A reference profile of the echo model (input x [N, 3], output y)."""
    sample = np.random.default_rng(14).normal(size=(40, 3)).astype(np.float32)
    return build_profile({"x": sample}, {"y": sample}).to_json()


@given(
    where=st.sampled_from(["profile", "input", "output"]),
    key=st.sampled_from(["format", "rows", "name", "tensor", "kind", "column", "categories"])
    | st.sampled_from(["edges", "proportions", "min", "parameters", "inputs"]),
    value=JSON_VALUES | DEEP_VALUES,
)
def test_reference_profile_fields(
    registry: tuple[httpx.Client, str], alarms: Alarms, where: str, key: str, value: Any
) -> None:
    """A registration whose reference profile has one field replaced or added: refused, or
    registered with a profile the next reads serve."""
    client, sha = registry
    profile = _profile()
    place = {"profile": profile, "input": profile["inputs"][0], "output": profile["outputs"][0]}
    place[where][key] = value
    body = {"sha256": sha, "reference": profile}
    assert_handled(client, alarms, "POST", "models/fraud/versions", _json(body))
    assert_handled(client, alarms, "GET", "models/fraud/versions")


@given(edits=BYTE_EDITS, transition=st.booleans())
def test_mutated_bodies(
    registry: tuple[httpx.Client, str],
    alarms: Alarms,
    edits: list[tuple[int, bytes]],
    transition: bool,
) -> None:
    client, sha = registry
    if transition:
        path, good = "models/m/versions/1/transition", {"stage": "production", "reason": "r"}
    else:
        path, good = "models/fraud/versions", {"sha256": sha, "stage": "staging", "tags": {}}
    assert_handled(client, alarms, "POST", path, mutated(_json(good), edits))


@given(
    what=st.sampled_from(["models", "history", "version", "versions", "artifact"]),
    name=NAMES,
    version=VERSIONS,
    query=st.text(max_size=12),
)
def test_reads(
    registry: tuple[httpx.Client, str],
    alarms: Alarms,
    what: str,
    name: str,
    version: str,
    query: str,
) -> None:
    client, _ = registry
    path = {
        "models": f"models?name={quote(query)}",
        "history": f"history?name={quote(query)}&name={quote(name)}",
        "version": _path("models", name, "versions", version),
        "versions": _path("models", name, "versions"),
        "artifact": _path("artifacts", query),
    }[what]
    assert_handled(client, alarms, "GET", path)
