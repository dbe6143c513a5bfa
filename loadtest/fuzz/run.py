"""The fuzzing loop: cases per decoder against live servers, judged, counted and saved."""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from loadtest.bench import REPO
from loadtest.fuzz import report
from loadtest.fuzz.grpc_cases import GrpcBytes, GrpcInfer
from loadtest.fuzz.http_cases import HttpBinary, HttpJson, HttpV1
from loadtest.fuzz.outcome import (
    FAILURES,
    Tally,
    classify,
    traceback_signature,
    traceback_text,
)
from loadtest.fuzz.registry_cases import Registry
from loadtest.fuzz.seeds import Oracle, build_models
from loadtest.fuzz.servers import Target, light_reference, make_store
from loadtest.fuzz.wire import Case, HttpClient, Reply
from loadtest.procs import ServerError

DECODERS: tuple[str, ...] = (
    "http-json",
    "http-binary",
    "http-v1",
    "grpc-raw",
    "grpc-typed",
    "grpc-bytes",
)
DECODERS += ("registry",)
RESULTS = REPO / "loadtest" / "results"
SHUTDOWN_RESERVE = 15.0  # seconds of the time limit kept for stopping the servers


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
    out: Path
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
    status = target.exit_status()
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


def _send(target: Target, case: Case) -> Reply:
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
    saver = Saver(opts.out, decoder.name, decoder.server, opts.seed, opts.save_limit)
    started = time.monotonic()
    for index in range(opts.cases):
        if time.monotonic() >= deadline:
            break
        case = decoder.case(random.Random(f"{opts.seed}:{decoder.name}:{index}"))
        reply = _send(target, case)
        verdict = judge(target, reply)
        if verdict.klass == "unsent":
            tally.unsent += 1
            continue
        tally.cases += 1
        _count(tally, verdict, index, case, reply, saver)
        _recover(target, verdict, reply, opts.case_timeout)
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


def _recover(target: Target, verdict: Verdict, reply: Reply, timeout: float) -> None:
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
    reply = _send(target, case)
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
    _recover(target, verdict, reply, timeout)


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
    """Start the servers the chosen decoders need ("gateway", "registry"), each on a store
    of its own holding the served models."""
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


def _target_kind(server: str) -> str:
    return "registry" if server == "registry" else "gateway"


def run(opts: Options) -> int:
    """Fuzz every chosen decoder within the time limit; print the table; 1 on any failure."""
    started = time.monotonic()
    deadline = started + opts.time_limit
    with tempfile.TemporaryDirectory(prefix="modelgate-fuzz-") as tmp:
        workdir = Path(tmp)
        decoders, models, reference = build_decoders(workdir)
        kinds = {_target_kind(decoders[name].server) for name in opts.decoders}
        targets = start_targets(
            workdir, models, reference, kinds, opts.case_timeout, opts.server_memory
        )
        tallies = []
        try:
            for position, name in enumerate(opts.decoders):
                left = len(opts.decoders) - position
                budget = (deadline - SHUTDOWN_RESERVE - time.monotonic()) / left
                decoder = decoders[name]
                target = targets[_target_kind(decoder.server)]
                tally = fuzz(decoder, target, opts, time.monotonic() + max(budget, 0.0))
                print(report.progress_line(tally), flush=True)
                tallies.append(tally)
        finally:
            for target in targets.values():
                target.stop()
    print()
    print(report.table(tallies, opts))
    print(report.signatures(tallies, opts.out))
    summary = opts.out / f"fuzz-{time.strftime('%Y%m%d-%H%M%S')}.json"
    summary.write_text(
        json.dumps(
            {
                "options": {**asdict(opts), "out": str(opts.out)},
                "decoders": [asdict(t) for t in tallies],
            },
            indent=1,
        )
    )
    print(f"\nsummary: {summary}")
    return 1 if any(t.failures for t in tallies) else 0


def replay(paths: list[Path], case_timeout: float, memory: float) -> int:
    """Send saved failing cases to fresh servers and print how each is answered now."""
    try:
        docs = [json.loads(path.read_text()) for path in paths]
        cases = [Case.from_json(doc["case"]) for doc in docs]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"fuzz: cannot read a saved case: {exc!r}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="modelgate-fuzz-") as tmp:
        workdir = Path(tmp)
        models = build_models()
        reference = light_reference(models["light"], workdir)
        kinds = {_target_kind(doc["server"]) for doc in docs}
        targets = start_targets(workdir, models, reference, kinds, case_timeout, memory)
        failed = 0
        try:
            for path, doc, case in zip(paths, docs, cases, strict=True):
                target = targets[_target_kind(doc["server"])]
                reply = _send(target, case)
                verdict = judge(target, reply)
                failed += bool(verdict.failures)
                print(
                    report.replay_line(
                        path, reply, verdict.klass, verdict.failures, verdict.signature
                    )
                )
                if verdict.log_text.strip():
                    print("  log: " + verdict.log_text.strip().replace("\n", "\n  log: ")[:3000])
                _recover(target, verdict, reply, case_timeout)
        finally:
            for target in targets.values():
                target.stop()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(
        prog="python -m loadtest.fuzz",
        description=(sys.modules["loadtest.fuzz"].__doc__ or "").splitlines()[0],
    )
    cli.add_argument("--cases", type=int, default=2000, help="cases per decoder (default 2000)")
    cli.add_argument("--seed", type=int, default=0, help="the run's seed (default 0)")
    cli.add_argument(
        "--time-limit", type=float, default=600.0, help="seconds for the whole run (default 600)"
    )
    cli.add_argument(
        "--decoder", action="append", choices=DECODERS, help="fuzz only this one (repeatable)"
    )
    cli.add_argument("--check-every", type=int, default=50, help="cases between good requests")
    cli.add_argument("--case-timeout", type=float, default=10.0, help="seconds before a hang")
    cli.add_argument("--out", type=Path, default=RESULTS, help="where results go")
    cli.add_argument("--save-limit", type=int, default=20, help="failing cases saved per decoder")
    cli.add_argument(
        "--server-memory",
        type=float,
        default=6.0,
        help="GiB of address space per server (prlimit --as; 0: no cap; default 6)",
    )
    cli.add_argument(
        "--replay", nargs="+", type=Path, metavar="CASE.json", help="resend saved cases"
    )
    args = cli.parse_args(argv)
    if args.cases < 0 or args.check_every < 1 or args.time_limit <= 0 or args.case_timeout <= 0:
        cli.error("--cases must be >= 0; --check-every, --time-limit, --case-timeout positive")
    try:
        if args.replay:
            return replay(args.replay, args.case_timeout, args.server_memory)
        args.out.mkdir(parents=True, exist_ok=True)
        opts = Options(
            cases=args.cases,
            seed=args.seed,
            time_limit=args.time_limit,
            decoders=tuple(args.decoder or DECODERS),
            check_every=args.check_every,
            case_timeout=args.case_timeout,
            out=args.out,
            save_limit=args.save_limit,
            server_memory=args.server_memory,
        )
        return run(opts)
    except ServerError as exc:
        print(f"fuzz: a server did not start: {exc}", file=sys.stderr)
        return 1
