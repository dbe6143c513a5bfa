"""A rollout under Locust load: register, canary, promote and roll back while users run.

Locust (loadtest/locustfile.py, V2 JSON and gRPC users) loads a gateway; meanwhile this
script, through the registry the gateway follows (a store directory, a `modelgate registry
serve` URL or MLflow), registers a new version of the model (the production version's own
file, or `--onnx`), puts it on canary at `--canary` percent, promotes it, and rolls back to
the version that served before. Every answer's version is recorded, and each stage change
is judged as loadtest/rollout.py judges its own scenario: failed requests, swap time and
the canary share observed.

    python -m loadtest.locust_rollout --host http://127.0.0.1:8000 \\
        --grpc-host 127.0.0.1:8001 --registry ./modelstore --model iris [--users 16]

Exit status 0 when no request failed (Locust's count and the answers'), 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from loadtest.rollout import Answer, Report, Step, judge, markdown
from modelgate.registry.client import RegistryClient, open_registry
from modelgate.registry.types import Stage

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
USER_CLASSES = ("V2JsonUser", "GrpcInferUser")  # the users whose answers name the version


@dataclasses.dataclass
class RolloutReport:
    """What the rollout did to traffic: Locust's own counts and the judged steps."""

    locust_requests: int
    locust_failures: int
    rollout: Report
    canary_asked: float
    canary_observed: float | None


def _refuse(message: str) -> SystemExit:
    """A user's mistake: one line, exit status 2."""
    print(f"locust_rollout: {message}", file=sys.stderr)
    return SystemExit(2)


def _production(registry: RegistryClient, model: str) -> int:
    found = [v.version for v in registry.list_versions(model) if v.stage is Stage.PRODUCTION]
    if not found:
        raise _refuse(f"model {model!r} has no production version to roll out from")
    return found[0]


def _apply(registry: RegistryClient, model: str, step: Step) -> float:
    """Apply `step` through the registry; the audit record's time."""
    registry.transition(
        model, step.version, Stage.parse(step.stage), traffic=step.traffic,
        actor="locust-rollout", reason=step.label,
    )  # fmt: skip
    return registry.history(model)[-1].at


def _locust_counts(prefix: Path) -> tuple[int, int]:
    with open(f"{prefix}_stats.csv", newline="") as f:
        total = next(row for row in csv.DictReader(f) if row["Name"] == "Aggregated")
    return int(total["Request Count"]), int(total["Failure Count"])


def _answers(path: Path) -> list[Answer]:
    if not path.exists():
        return []
    return [Answer(**json.loads(line)) for line in path.read_text().splitlines() if line]


def run(args: argparse.Namespace) -> RolloutReport:
    """Start Locust, apply the steps while it runs, stop it and judge the answers."""
    token = Path(args.token_file).read_text().strip() if args.token_file else None
    registry = open_registry(args.registry, token=token)
    before = _production(registry, args.model)
    artifact = (
        Path(args.onnx).read_bytes()
        if args.onnx
        else registry.read_artifact(registry.get(args.model, before))
    )
    with tempfile.TemporaryDirectory(prefix="modelgate-locust-rollout-") as tmp:
        prefix, answers_file = Path(tmp) / "locust", Path(tmp) / "answers.jsonl"
        argv = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "-u", str(args.users), "-r", str(args.users), "-t", "3600s", "--only-summary",
            "--host", args.host, "--model", args.model, "--routing-keys", "0",
            "--answers-file", str(answers_file), "--csv", str(prefix), *USER_CLASSES,
        ]  # fmt: skip
        if args.grpc_host:
            argv += ["--grpc-host", args.grpc_host]
        locust = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(args.baseline)
            new = registry.register(
                args.model, artifact, actor="locust-rollout", reason="locust rollout"
            ).version
            steps = [
                Step(f"canary v{new} at {args.canary:g}%", new, "canary",
                     frozenset({str(before), str(new)}), args.canary),
                Step(f"promote v{new}", new, "production", frozenset({str(new)})),
                Step(f"roll back to v{before}", before, "production", frozenset({str(before)})),
            ]  # fmt: skip
            changes = []
            for step in steps:
                changes.append(_apply(registry, args.model, step))
                time.sleep(args.settle)
            end = time.time()
        finally:
            locust.send_signal(signal.SIGTERM)  # Locust stops, writes its CSV and the answers
            _, err = locust.communicate(timeout=60)
        if locust.returncode == 2:
            lines = err.decode(errors="replace").strip().splitlines()
            raise _refuse(next((x for x in lines if "modelgate:" in x), "locust exited with 2"))
        requests, failures = _locust_counts(prefix)
        answers = _answers(answers_file)
    failed = [a for a in answers if a.version is None]
    report = Report(
        steps=judge(answers, steps, changes, end, start=frozenset({str(before)})),
        requests=len(answers),
        errors=len(failed),
        error_samples=[a.error for a in failed[:5]],
    )
    return RolloutReport(requests, failures, report, args.canary, report.steps[0].canary_share)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True, help="the gateway's HTTP URL")
    parser.add_argument("--grpc-host", default="", help="its gRPC host:port")
    parser.add_argument("--registry", required=True, help="the registry the gateway follows")
    parser.add_argument("--token-file", help="a registry token allowed to write")
    parser.add_argument("--model", default="iris")
    parser.add_argument("--onnx", help="the new version's file (default: production's own)")
    parser.add_argument("--canary", type=float, default=20.0, help="canary share, percent")
    parser.add_argument("--users", type=int, default=8, help="Locust users")
    parser.add_argument(
        "--baseline", type=float, default=5.0, help="seconds before the first change"
    )
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after each change")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    result = run(args)
    if args.markdown:
        share = result.canary_observed
        print(markdown(result.rollout))
        print(f"\nLocust: {result.locust_requests} requests, {result.locust_failures} failed; "
              f"canary share asked {args.canary:g}%, observed "
              f"{'-' if share is None else f'{share:.1%}'}")  # fmt: skip
    else:
        print(json.dumps(dataclasses.asdict(result), indent=2))
    return 1 if result.locust_failures or result.rollout.errors else 0


if __name__ == "__main__":
    sys.exit(main())
