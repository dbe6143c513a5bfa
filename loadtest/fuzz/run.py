"""The fuzzing loop: a decoder's cases against a live server, judged, counted and saved."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from loadtest.fuzz.grpc_cases import GrpcBytes, GrpcInfer
from loadtest.fuzz.http_cases import HttpBinary, HttpJson, HttpV1
from loadtest.fuzz.outcome import (
    FAILURES,
    Tally,
    classify,
    error_signature,
    traceback_signature,
    traceback_text,
)
from loadtest.fuzz.registry_cases import Registry
from loadtest.fuzz.seeds import Oracle, build_models
from loadtest.fuzz.servers import Target, light_reference, make_store
from loadtest.fuzz.wire import Case, HttpClient, Reply

DECODERS: tuple[str, ...] = ("http-json", "http-binary", "http-v1", "grpc-raw", "grpc-typed")
DECODERS += ("grpc-bytes", "registry")


class Decoder(Protocol):
    """Makes the fuzz cases of one decoder, and good requests with the check of their answer."""

    name: str
    server: str  # http | grpc (the gateway's ports) | registry

    def case(self, rng: random.Random) -> Case: ...

    def good(self, rng: random.Random) -> tuple[Case, Callable[[Reply], str | None]]: ...


@dataclass(frozen=True, slots=True)
class Options:
    cases: int
    seed: int
    time_limit: float
    decoders: tuple[str, ...]
    check_every: int
    case_timeout: float
    save_dir: Path  # failing cases go to <save_dir>/fuzz-<decoder>/
    save_limit: int
    server_memory: float  # GiB of address space each server may map


@dataclass(slots=True)
class Verdict:
    """One answer judged: its class, the failures it shows, a signature, the log it made."""

    klass: str
    failures: list[str]
    signature: str | None
    log_bytes: int
    log_text: str


def judge(target: Target, reply: Reply) -> Verdict:
    """Classify `reply`, then look at the server: its new log lines, whether it still runs."""
    klass, signature = classify(reply, registry=target.kind == "registry")
    failures = [klass] if klass in FAILURES else []
    assert target.watch is not None
    added, text = target.watch.take()
    found = traceback_signature(text)
    if found is not None:
        failures.append("traceback")
        signature = found  # where it broke says more than the status it broke with
    elif failures:
        signature = error_signature(text) or signature
    status = target.exit_status()
    waited = 0
    while status is None and klass == "reset" and waited < 10:  # a dying server drops its
        time.sleep(0.1)  # connections a moment before it can be seen to have exited
        status, waited = target.exit_status(), waited + 1
    if status is not None:
        failures.append("crash")
        signature = f"crash: exit status {status}"
    return Verdict(klass, failures, signature, added, text)


class Saver:
    """Failing cases of one decoder as JSON files under loadtest/results/fuzz-<decoder>/:
    the first `limit`, and the first of each further signature (up to 2 x `limit`)."""

    def __init__(self, out: Path, decoder: str, server: str, seed: int, limit: int) -> None:
        self.folder = out / f"fuzz-{decoder}"
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in [*self.folder.glob("case-*.json"), *self.folder.glob("case-*.body")]:
            stale.unlink()  # from an earlier run: they would not match this run's table
        self._decoder, self._server, self._seed, self._limit = decoder, server, seed, limit
        self.saved = 0

    def save(self, index: int, case: Case, reply: Reply, verdict: Verdict, new: bool) -> None:
        if self.saved >= self._limit and not (new and self.saved < 2 * self._limit):
            return
        self.saved += 1
        path = self.folder / f"case-{index:06d}.json"
        doc = {
            "decoder": self._decoder,
            "server": self._server,
            "seed": self._seed,
            "index": index,
            "signature": verdict.signature,
            "failures": verdict.failures,
            "reply": {
                "status": reply.status,
                "code": reply.code,
                "transport": reply.transport,
                "detail": reply.detail,
                "body": reply.body[:2000].decode("utf-8", "replace"),
            },
            "traceback": traceback_text(verdict.log_text),
            "case": case.to_json(),
            "replay": f"python -m loadtest.fuzz --replay {path}",
        }
        path.write_text(json.dumps(doc, indent=1, ensure_ascii=True))
        path.with_suffix(".body").write_bytes(case.body)


def send(target: Target, case: Case) -> Reply:
    client = target.grpc if case.kind == "grpc" else target.http
    assert client is not None
    return client.send(case)


def _stuck(target: Target, timeout: float) -> bool:
    """After a hang: whether the server has stopped answering altogether."""
    assert target.http is not None
    probe = "/v2/health/live" if target.kind == "gateway" else "/api/v1/generation"
    client = HttpClient(target.http.address, timeout)
    try:
        return client.send(Case("http", probe, method="GET")).status != 200
    finally:
        client.close()


def fuzz(decoder: Decoder, target: Target, opts: Options, deadline: float) -> Tally:
    """Run `decoder`'s cases until `opts.cases` or `deadline`; a good request every
    `opts.check_every` cases."""
    tally = Tally(decoder.name)
    saver = Saver(opts.save_dir, decoder.name, decoder.server, opts.seed, opts.save_limit)
    started = time.monotonic()
    for index in range(opts.cases):
        if time.monotonic() >= deadline:
            break
        case = decoder.case(random.Random(f"{opts.seed}:{decoder.name}:{index}"))
        reply = send(target, case)
        verdict = judge(target, reply)
        if verdict.klass == "unsent":
            tally.unsent += 1
            continue
        tally.cases += 1
        _count(tally, verdict, index, case, reply, saver)
        recover(target, verdict, reply, opts.case_timeout)
        if (index + 1) % opts.check_every == 0:
            _check_good(decoder, target, opts.seed, index, tally, saver, opts.case_timeout)
    tally.seconds = time.monotonic() - started
    return tally


def _count(
    tally: Tally, verdict: Verdict, index: int, case: Case, reply: Reply, saver: Saver
) -> None:
    tally.add(verdict.klass)
    tally.log_bytes += verdict.log_bytes
    for name in verdict.failures:
        if name != verdict.klass:
            tally.add(name)
    if verdict.failures:
        tally.failures += 1
        new = tally.fail(verdict.signature or "?", index)
        saver.save(index, case, reply, verdict, new)


def recover(target: Target, verdict: Verdict, reply: Reply, timeout: float) -> None:
    """Restart a server that died, or that stopped answering after a hang."""
    hung = reply.transport == "hang"
    if "crash" in verdict.failures or (hung and _stuck(target, timeout)):
        target.restart()


def _check_good(
    decoder: Decoder,
    target: Target,
    seed: int,
    index: int,
    tally: Tally,
    saver: Saver,
    timeout: float,
) -> None:
    """A known good request through the decoder's protocol; its answer must be right."""
    case, check = decoder.good(random.Random(f"{seed}:{decoder.name}:good:{index}"))
    reply = send(target, case)
    try:
        problem = check(reply)
    except Exception as exc:  # an answer too broken to parse
        problem = f"unreadable answer: {type(exc).__name__}: {exc}"
    verdict = judge(target, reply)
    tally.good_checks += 1
    tally.log_bytes += verdict.log_bytes
    # Whatever came back instead of the right answer, it is "wrong" (not a case's class),
    # plus what the server itself showed.
    verdict.failures = [f for f in verdict.failures if f in ("traceback", "crash")]
    if problem is not None:
        verdict.failures.insert(0, "wrong")
        verdict.signature = verdict.signature or f"wrong answer: {problem[:160]}"
    for name in verdict.failures:
        tally.add(name)
    if verdict.failures:
        tally.failures += 1
        new = tally.fail(verdict.signature or "?", index)
        saver.save(index, case, reply, verdict, new)
    recover(target, verdict, reply, timeout)


def build_decoders(workdir: Path) -> tuple[dict[str, Decoder], dict[str, bytes], dict[str, Any]]:
    """Every decoder, over the served models (and those models and the light reference)."""
    models = build_models()
    reference = light_reference(models["light"], workdir)
    oracle = Oracle(models)
    decoders: dict[str, Decoder] = {
        "http-json": HttpJson(oracle),
        "http-binary": HttpBinary(oracle),
        "http-v1": HttpV1(oracle),
        "grpc-raw": GrpcInfer(oracle, raw=True),
        "grpc-typed": GrpcInfer(oracle, raw=False),
        "grpc-bytes": GrpcBytes(oracle),
        "registry": Registry(models, reference),
    }
    return decoders, models, reference


def start_targets(
    workdir: Path,
    models: dict[str, bytes],
    reference: dict[str, Any],
    kinds: set[str],
    timeout: float,
    memory: float,
) -> dict[str, Target]:
    """Start the servers `kinds` names ("gateway", "registry"), each on a store of its own
    holding the served models."""
    targets = {}
    if "gateway" in kinds:
        store = make_store(workdir / "gateway-store", models, reference)
        targets["gateway"] = Target("gateway", store, workdir, timeout, memory)
    if "registry" in kinds:
        subset = {n: models[n] for n in ("light", "words", "lookup")}
        store = make_store(workdir / "registry-store", subset, reference)
        targets["registry"] = Target("registry", store, workdir, timeout, memory)
    for target in targets.values():
        target.start()
    return targets


def target_kind(server: str) -> str:
    """Which server a decoder's `server` ("http", "grpc", "registry") is part of."""
    return "registry" if server == "registry" else "gateway"
