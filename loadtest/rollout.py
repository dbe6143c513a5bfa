"""Stage changes under load: a canary, a promotion, a rollback and a shadow, measured.

A gateway runs as a subprocess on the embedded registry, several HTTP and gRPC clients keep
it busy, and a script changes stages with `modelgate registry transition` exactly as an ML
engineer would. Every answer is recorded (time, protocol, routing key, version, outcome),
and each stage change is judged from the record:

- swap: seconds from the registry commit (the audit record's time) until the traffic
  follows the new stages — the first answer from a version that joined the live split and
  the last answer from one that left it, whichever is later;
- errors: failed requests (the target is none);
- canary share: the fraction of unkeyed requests sent after the swap landed that the
  canary answered;
- sticky: whether any routing key was answered by two versions among the requests sent
  while the weights held (from `sticky_from` seconds after the change, if given);
- flaps: routing keys whose version changed more than once within the step, the swap
  included (A -> B -> A: some worker still routed by the old table after another had
  switched). Only changes that follow one another are counted: a request sent after the
  previous one was answered (`causal_changes`), so two requests of one key in flight
  together never count;
- dip: how much lower throughput was in the 3 s after the change than in the 3 s before
  (the stage-change process itself, e.g. the CLI starting up, competes for the same cores).

    python -m loadtest.rollout [--clients 6] [--grpc-clients 2] [--via cli|api] [--markdown]

The test suite runs the same scenario (tests/test_rollout_under_load.py) and asserts on it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np

from loadtest.procs import ServerProcess
from modelgate.gateway.protocol import grpc_predict_v2_pb2 as pb
from modelgate.gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import Stage

LISTENING = r"modelgate listening http=(\S+) grpc=(\S+) metrics=(\S+)"
STICKY_KEYS = 200  # keyed requests draw from this many users, so keys repeat


@dataclass(frozen=True, slots=True)
class Answer:
    at: float  # when the answer came, wall-clock seconds (comparable with audit records)
    protocol: str
    key: str | None
    version: str | None  # None: the request failed
    error: str = ""
    sent: float = 0.0  # when the request left: routed no earlier than this


@dataclass(frozen=True, slots=True)
class Step:
    """One stage change and what unaddressed traffic should reach after it."""

    label: str
    version: int
    stage: str
    live: frozenset[str]  # versions answering unaddressed requests once the swap landed
    traffic: float | None = None
    min_unkeyed: int = 0  # keep the load on until this many unkeyed answers after the swap
    settle: float = 4.0  # seconds of load after the swap landed


@dataclass
class StepResult:
    label: str
    changed_at: float
    swap_seconds: float | None
    errors: int
    requests: int
    unkeyed_after_swap: int
    canary_share: float | None
    sticky_flips: int
    dip: float | None
    sticky_flaps: int = 0
    shadow_answers: int = 0


@dataclass
class Report:
    steps: list[StepResult] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    shadow_compared: float = 0.0


def default_steps(shadow: int = 3) -> list[Step]:
    return [
        Step("canary v2 at 20%", 2, "canary", frozenset({"1", "2"}), 20.0, min_unkeyed=2000),
        Step("promote v2", 2, "production", frozenset({"2"})),
        Step("roll back to v1", 1, "production", frozenset({"1"})),
        Step(f"shadow v{shadow} at 100%", shadow, "shadow", frozenset({"1"}), 100.0),
    ]


class Load:
    """HTTP and gRPC clients sending single-row requests until stopped."""

    def __init__(
        self,
        http: str,
        grpc_address: str,
        model: str,
        features: int,
        keyed: float = 0.5,
        keys: int = STICKY_KEYS,
    ) -> None:
        self.http = http
        self.keys = keys
        self.grpc = grpc_address
        self.model = model
        self.keyed = keyed
        self.answers: list[Answer] = []
        self._stop = asyncio.Event()
        rows = np.random.default_rng(1).normal(size=(64, features)).astype(np.float32)
        self._rows = rows
        self._json = [
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, features],
                         "data": row.tolist()}]}
            for row in rows
        ]  # fmt: skip

    def _key(self) -> str | None:
        return f"user-{random.randrange(self.keys)}" if random.random() < self.keyed else None

    def _record(
        self, sent: float, protocol: str, key: str | None, version: str | None, error: str = ""
    ) -> None:
        self.answers.append(Answer(time.time(), protocol, key, version, error, sent))

    async def _http_client(self) -> None:
        url = f"{self.http}/v2/models/{self.model}/infer"
        async with httpx.AsyncClient(timeout=30) as client:
            while not self._stop.is_set():
                key = self._key()
                headers = {"x-routing-key": key} if key else {}
                body = random.choice(self._json)
                sent = time.time()
                try:
                    response = await client.post(url, json=body, headers=headers)
                except httpx.HTTPError as exc:
                    self._record(sent, "http", key, None, repr(exc))
                    continue
                if response.status_code == 200:
                    self._record(sent, "http", key, str(response.json()["model_version"]))
                else:
                    self._record(sent, "http", key, None, f"{response.status_code} {response.text}")

    async def _grpc_client(self) -> None:
        async with grpc.aio.insecure_channel(self.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not self._stop.is_set():
                key = self._key()
                row = self._rows[random.randrange(len(self._rows))]
                request = pb.ModelInferRequest(model_name=self.model)
                request.inputs.add(name="input", datatype="FP32", shape=[1, row.size])
                request.raw_input_contents.append(row.tobytes())
                metadata = (("x-routing-key", key),) if key else None
                sent = time.time()
                try:
                    reply = await stub.ModelInfer(request, metadata=metadata, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    self._record(sent, "grpc", key, None, f"{exc.code().name} {exc.details()}")
                    continue
                self._record(sent, "grpc", key, reply.model_version)

    async def run(self, http_clients: int, grpc_clients: int) -> None:
        await asyncio.gather(
            *(self._http_client() for _ in range(http_clients)),
            *(self._grpc_client() for _ in range(grpc_clients)),
        )

    def stop(self) -> None:
        self._stop.set()


async def transition(store: Path, model: str, step: Step, via: str = "cli") -> float:
    """Apply `step` with `modelgate registry transition` in a subprocess (`via="cli"`), or
    through the registry API in this process (`via="api"`: no process start-up competing
    for the CPU); returns the audit record's time."""
    if via == "api":
        registry = RegistryStore(store)
        stage = Stage.parse(step.stage)
        await asyncio.to_thread(
            registry.transition,
            model,
            step.version,
            stage,
            traffic=step.traffic,
            actor="rollout-script",
        )
        return registry.history(model)[-1].at
    argv = [sys.executable, "-m", "modelgate", "registry", "--store", str(store), "transition",
            model, str(step.version), step.stage, "--actor", "rollout-script"]  # fmt: skip
    if step.traffic is not None:
        argv += ["--traffic", f"{step.traffic:g}"]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"transition failed: {err.decode()}{out.decode()}")
    history = RegistryStore(store).history(model)
    return history[-1].at


def _landed(answers: Sequence[Answer], since: float, before: frozenset[str], step: Step) -> float:
    """When traffic follows `step`: the first answer from a version that joined the live
    split, and the last from one that left it (keyed or not: both are live traffic)."""
    joined = step.live - before
    left = before - step.live
    first_new = next((a.at for a in answers if a.at >= since and a.version in joined), since)
    last_old = max((a.at for a in answers if a.at >= since and a.version in left), default=since)
    return max(first_new, last_old)


def judge(
    answers: Sequence[Answer],
    steps: Sequence[Step],
    changes: Sequence[float],
    end: float,
    sticky_from: float = 0.0,
    start: frozenset[str] = frozenset({"1"}),
) -> list[StepResult]:
    """Each step's figures from the answers (see the module docstring); `start`: the
    versions answering before the first step."""
    answers = sorted(answers, key=lambda a: a.at)
    results = []
    live = start
    for i, (step, changed) in enumerate(zip(steps, changes, strict=True)):
        until = changes[i + 1] if i + 1 < len(changes) else end
        window = [a for a in answers if changed <= a.at < until]
        swapped = _landed(window, changed, live, step) if step.live != live else changed
        # Requests sent after the swap landed were routed by the new table: in-flight ones
        # answered a little later may still carry the old routing.
        settled = [a for a in window if a.sent > swapped and a.version is not None]
        unkeyed = [a for a in settled if a.key is None]
        share = None
        if step.stage == "canary" and unkeyed:
            share = sum(a.version == str(step.version) for a in unkeyed) / len(unkeyed)
        by_key: dict[str, set[str]] = {}
        chains: dict[str, list[Answer]] = {}
        for a in window:
            if a.key is not None and a.version is not None:
                chains.setdefault(a.key, []).append(a)
        for a in settled:
            if a.key is not None and a.version is not None and a.sent >= changed + sticky_from:
                by_key.setdefault(a.key, set()).add(a.version)
        results.append(
            StepResult(
                label=step.label,
                changed_at=changed,
                swap_seconds=swapped - changed if step.live != live else 0.0,
                errors=sum(a.version is None for a in window),
                requests=len(window),
                unkeyed_after_swap=len(unkeyed),
                canary_share=share,
                sticky_flips=sum(len(v) > 1 for v in by_key.values()),
                dip=_dip(answers, changed),
                sticky_flaps=sum(causal_changes(chain) > 1 for chain in chains.values()),
                shadow_answers=sum(
                    a.version == str(step.version) for a in settled if step.stage == "shadow"
                ),
            )
        )
        live = step.live
    return results


def causal_changes(answers: Sequence[Answer]) -> int:
    """The most version changes along a chain of `answers` (of one key) in which each
    request was sent after the one before it was answered."""
    # Sweep sends and answers in time order: at a send, the longest chain it can extend
    # ends in an answer already received; at an answer, that chain ends in its version.
    events = sorted(
        [(a.sent, 1, i) for i, a in enumerate(answers)]
        + [(a.at, 0, i) for i, a in enumerate(answers)]
    )  # answers before sends at the same instant: a chain needs `sent` after `at`
    longest: dict[str, int] = {}  # version -> most changes of a chain ending on it
    chain = [0] * len(answers)
    for _, kind, i in events:
        version = answers[i].version or ""
        if kind == 1:
            chain[i] = max(
                (n + (v != version) for v, n in longest.items()),
                default=0,
            )
        else:
            longest[version] = max(longest.get(version, 0), chain[i])
    return max(longest.values(), default=0)


def _dip(answers: Sequence[Answer], changed: float, seconds: float = 3.0) -> float | None:
    """How much lower throughput was in the `seconds` after the change than in the
    `seconds` before it (0 when it was not lower)."""
    times = np.array([a.at for a in answers])
    before = int(np.count_nonzero((times >= changed - seconds) & (times < changed)))
    after = int(np.count_nonzero((times >= changed) & (times < changed + seconds)))
    if before == 0:
        return None
    return max(0.0, 1.0 - after / before)


async def _settle(
    load: Load, since: float, step: Step, before: frozenset[str], timeout: float
) -> None:
    """Keep the load on until the swap has landed and then `settle` seconds (and the step's
    minimum of unkeyed answers) have passed."""
    deadline = time.monotonic() + timeout
    joined, left = step.live - before, before - step.live
    landed = None
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        answers = [a for a in load.answers if a.at >= since and a.key is None]
        if landed is None:
            recent = {a.version for a in answers[-50:]}
            if (not joined or recent & joined) and not (recent & left):
                landed = time.time()
        if landed is None:
            continue
        unkeyed = sum(a.at > landed for a in answers)
        if time.time() - landed >= step.settle and unkeyed >= step.min_unkeyed:
            return
    raise TimeoutError(f"step {step.label!r} did not complete within {timeout:.0f} s")


async def drive(
    store: Path,
    model: str,
    http: str,
    grpc_address: str,
    features: int,
    steps: Sequence[Step],
    *,
    http_clients: int = 6,
    grpc_clients: int = 2,
    baseline: float = 3.0,
    step_timeout: float = 60.0,
    via: str = "cli",
    sticky_from: float = 0.0,
    keys: int = STICKY_KEYS,
) -> tuple[Report, list[Answer]]:
    """Run the load (keyed requests spread over `keys` routing keys), apply `steps` one
    after another, and judge them."""
    load = Load(http, grpc_address, model, features, keys=keys)
    running = asyncio.create_task(load.run(http_clients, grpc_clients))
    changes: list[float] = []
    live = frozenset({"1"})
    try:
        await asyncio.sleep(baseline)
        for step in steps:
            if running.done():
                running.result()
            changed = await transition(store, model, step, via)
            changes.append(changed)
            await _settle(load, changed, step, live, step_timeout)
            live = step.live
        end = time.time()
    finally:
        load.stop()
        await running
    answers = list(load.answers)
    failed = [a for a in answers if a.version is None]
    report = Report(
        steps=judge(answers, steps, changes, end, sticky_from),
        requests=len(answers),
        errors=len(failed),
        error_samples=[a.error for a in failed[:5]],
    )
    return report, answers


def prepare_store(root: Path, model: bytes, shadow_model: bytes | None = None) -> Path:
    """v1 in production, v2 registered, v3 (the shadow; another model if given)."""
    store = RegistryStore(root, create=True)
    store.register("light", model, stage=Stage.PRODUCTION, actor="rollout-script")
    store.register("light", model, actor="rollout-script")
    store.register("light", shadow_model or model, actor="rollout-script")
    return root


def markdown(report: Report) -> str:
    lines = [
        "| stage change | swap (s) | failed requests | requests | canary share | "
        "sticky keys flipped | keys flapping | throughput dip |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report.steps:
        share = f"{s.canary_share:.1%}" if s.canary_share is not None else "-"
        dip = f"{s.dip:.0%}" if s.dip is not None else "-"
        swap = f"{s.swap_seconds:.2f}" if s.swap_seconds is not None else "-"
        lines.append(
            f"| {s.label} | {swap} | {s.errors} | {s.requests} | {share} | "
            f"{s.sticky_flips} | {s.sticky_flaps} | {dip} |"
        )
    return "\n".join(lines)


async def _main(args: argparse.Namespace) -> int:
    from loadtest.models import FEATURES, build_light

    with tempfile.TemporaryDirectory(prefix="modelgate-rollout-") as tmp:
        root = prepare_store(Path(tmp) / "store", build_light())
        log = Path(tmp) / "gateway.log"
        argv = [sys.executable, "-m", "modelgate", "serve", "--store", str(root),
                "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]  # fmt: skip
        server = ServerProcess(argv, log)
        try:
            found = server.wait_for_line(LISTENING, timeout=60)
            http, grpc_address = f"http://{found.group(1)}", found.group(2)
            server.wait_http_ok(f"{http}/v2/health/ready", timeout=60)
            report, _ = await drive(
                root, "light", http, grpc_address, FEATURES, default_steps(),
                http_clients=args.clients, grpc_clients=args.grpc_clients, via=args.via,
            )  # fmt: skip
        finally:
            server.stop()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dataclasses.asdict(report), indent=2))
    print(markdown(report) if args.markdown else json.dumps(dataclasses.asdict(report), indent=2))
    return 1 if report.errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=6, help="HTTP clients")
    parser.add_argument("--grpc-clients", type=int, default=2)
    parser.add_argument(
        "--via",
        choices=("cli", "api"),
        default="cli",
        help="change stages with the CLI in a subprocess, or the registry API in-process",
    )
    parser.add_argument("--out", help="also write the JSON report here")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
