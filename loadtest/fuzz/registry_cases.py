"""Fuzz cases for the registry server's JSON API (`modelgate registry serve`, registry/server.py):
reads, artifact uploads, registrations and stage changes, with hostile paths, queries,
methods, tokens and bodies.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import orjson

from loadtest.fuzz import mutate, values
from loadtest.fuzz.http_cases import Check
from loadtest.fuzz.wire import Case, Reply

TOKEN = "fuzz-secret"
_AUTH = ("Authorization", f"Bearer {TOKEN}")
_STAGES = ("none", "staging", "canary", "production", "shadow", "archived")
_SEGMENTS = (
    *("", "%00", "%2F", "..", "%2e%2e", "%C2%B2", "%D9%A1", "%EF%BC%91", "0", "-1", "1.0"),
    *("99999999999999999999", "9223372036854775808", "1" * 400, "%ff", "%", "%zz", "a" * 5000),
    *("light%00", "%F0%9F%98%80", "1e3", "%201", "versions", "transition", "%0A"),
)
_QUERIES = ("name=", "name=%ff", "name&name=light", "name=" + "x" * 9000, "name=%00", "=&&=", "%")
_SEEDS: tuple[str, ...] = (
    "generation",
    "models",
    "versions",
    "version",
    "history",
    "head-artifact",
)
_SEEDS += ("get-artifact", "put-artifact", "register", "transition")
_AUTHS = ("Bearer wrong", "", "Bearer ", "Basic Zm9vOmJhcg==", "Bearer " + "x" * 9000, "bearer")


class Registry:
    """Requests to /api/v1 of a registry server holding the fuzzed gateway's models."""

    name = "registry"
    server = "registry"

    def __init__(self, models: dict[str, bytes], reference: dict[str, Any]) -> None:
        self._models = {name: models[name] for name in ("light", "words", "lookup")}
        self._sha = {name: hashlib.sha256(data).hexdigest() for name, data in models.items()}
        self._reference = reference

    def case(self, rng: random.Random) -> Case:
        ops: list[str] = []
        method, parts, query, body = self._seed(rng, ops)
        headers = [_AUTH, ("Content-Type", "application/json")]
        roll = rng.random()
        if roll < 0.35 and isinstance(body, dict):
            body = mutate.mutate_json(body, rng, ops)
        elif roll < 0.6:
            parts[rng.randrange(len(parts))] = rng.choice((*_SEGMENTS, self._odd_sha(rng)))
            ops.append("path")
        elif roll < 0.68:
            query = rng.choice(_QUERIES)
            ops.append("query")
        elif roll < 0.76:
            method = rng.choice(("GET", "POST", "PUT", "HEAD", "DELETE", "PATCH", "OPTIONS"))
            ops.append("method")
        elif roll < 0.84:
            headers[0] = ("Authorization", rng.choice(_AUTHS))
            ops.append("auth")
        data = body if isinstance(body, bytes) else values.dumps(body) if body is not None else b""
        if roll >= 0.84:
            data = mutate.mutate_bytes(data, rng, ops)
        path = "/" + "/".join(parts) + (f"?{query}" if query else "")
        return Case("http", path, data, method, tuple(headers), tuple(ops))

    def _seed(
        self, rng: random.Random, ops: list[str]
    ) -> tuple[str, list[str], str, dict[str, Any] | bytes | None]:
        """A valid request: (method, path segments, query, JSON document or raw body)."""
        model = rng.choice(tuple(self._models))
        name = model if rng.random() < 0.7 else f"fuzz-{rng.randrange(20)}"
        sha = self._sha[model]
        kind = rng.randrange(10)
        ops.append(_SEEDS[kind])
        base = ["api", "v1"]
        if kind == 0:
            return "GET", [*base, "generation"], "", None
        if kind == 1:
            return "GET", [*base, "models"], rng.choice(("", f"name={model}")), None
        if kind == 2:
            return "GET", [*base, "models", name, "versions"], "", None
        if kind == 3:
            return "GET", [*base, "models", model, "versions", "1"], "", None
        if kind == 4:
            return "GET", [*base, "history"], rng.choice(("", f"name={model}")), None
        if kind in (5, 6):
            return ("HEAD" if kind == 5 else "GET"), [*base, "artifacts", sha], "", None
        if kind == 7:
            return "PUT", [*base, "artifacts", sha], "", self._models[model]
        if kind == 8:
            doc: dict[str, Any] = {"sha256": sha, "stage": rng.choice(_STAGES[:2])}
            if rng.random() < 0.5:
                doc.update(description="fuzz", tags={"k": "v"}, actor="fuzz", reason="fuzzing")
            if model == "light" and rng.random() < 0.5:
                doc["reference"] = orjson.loads(orjson.dumps(self._reference))  # a deep copy
            return "POST", [*base, "models", name, "versions"], "", doc
        stage = rng.choice(_STAGES)
        doc = {"stage": stage, "reason": "fuzzing", "actor": "fuzz"}
        if stage in ("canary", "shadow"):
            doc["traffic"] = rng.choice((10, 50.0, 100))
        if rng.random() < 0.3:
            doc["keep"] = True
        return "POST", [*base, "models", model, "versions", "1", "transition"], "", doc

    @staticmethod
    def _odd_sha(rng: random.Random) -> str:
        sha = rng.randbytes(32).hex()
        return rng.choice((sha, sha.upper(), sha[:-1], sha + "0", sha[:-1] + "g"))

    def good(self, rng: random.Random) -> tuple[Case, Check]:
        sha, model = self._sha["light"], self._models["light"]
        if rng.random() < 0.5:
            case = Case("http", "/api/v1/models/light/versions/1", method="GET")

            def check(reply: Reply) -> str | None:
                if reply.status != 200:
                    return f"status {reply.status} {reply.transport or ''}: {reply.body[:200]!r}"
                got = orjson.loads(reply.body).get("sha256")
                return None if got == sha else f"light v1 has sha256 {got}, not {sha}"

            return case, check
        case = Case("http", f"/api/v1/artifacts/{sha}", method="GET")

        def check_artifact(reply: Reply) -> str | None:
            if reply.status != 200:
                return f"status {reply.status} {reply.transport or ''}: {reply.body[:200]!r}"
            return None if reply.body == model else "the artifact's bytes differ from light's"

        return case, check_artifact
