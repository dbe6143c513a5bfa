"""`python -m loadtest.fuzz`: the command line, the run within its time limit, the report,
and resending saved cases."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from loadtest import report
from loadtest.fuzz import table
from loadtest.fuzz.run import (
    DECODERS,
    Options,
    build_decoders,
    fuzz,
    judge,
    recover,
    send,
    start_targets,
    target_kind,
)
from loadtest.fuzz.seeds import build_models
from loadtest.fuzz.servers import light_reference
from loadtest.fuzz.wire import Case
from loadtest.procs import ServerError

SHUTDOWN_RESERVE = 15.0  # seconds of the time limit kept for stopping the servers


def run(opts: Options, markdown: bool, out: Path) -> int:
    """Fuzz every chosen decoder within the time limit, each getting an equal share of the
    time left when it starts; print the table; 1 on any failure."""
    started = time.monotonic()
    deadline = started + opts.time_limit
    header = report.machine()
    with tempfile.TemporaryDirectory(prefix="modelgate-fuzz-") as tmp:
        workdir = Path(tmp)
        decoders, models, reference = build_decoders(workdir)
        kinds = {target_kind(decoders[name].server) for name in opts.decoders}
        targets = start_targets(
            workdir, models, reference, kinds, opts.case_timeout, opts.server_memory
        )
        tallies = []
        try:
            for position, name in enumerate(opts.decoders):
                share = (deadline - SHUTDOWN_RESERVE - time.monotonic()) / (
                    len(opts.decoders) - position
                )
                decoder = decoders[name]
                target = targets[target_kind(decoder.server)]
                tallies.append(fuzz(decoder, target, opts, time.monotonic() + max(share, 0.0)))
                print("  " + table.progress_row(tallies[-1]), flush=True)
        finally:
            for target in targets.values():
                target.stop()
    header["fuzz"] = (
        f"seed {opts.seed}, up to {opts.cases:,} cases per decoder, a good request every "
        f"{opts.check_every}, case timeout {opts.case_timeout:g} s, time limit "
        f"{opts.time_limit:g} s, servers capped at {opts.server_memory:g} GiB"
    )
    header = report.finish_header(header, started)
    notes = table.notes(tallies, opts.save_dir)
    report.print_run(header, (table.HEADERS, table.rows(tallies), table.LEFT), notes, markdown)
    failures = sum(t.failures for t in tallies)
    print(f"\n{'FAIL' if failures else 'ok'}: {failures:,} failing case(s)")
    settings = {**asdict(opts), "save_dir": str(opts.save_dir)}
    doc = {"header": header, "settings": settings, "decoders": [asdict(t) for t in tallies]}
    report.write_json(out, doc)
    print(f"results: {out}")
    return 1 if failures else 0


def replay(paths: list[Path], case_timeout: float, memory: float) -> int:
    """Send saved failing cases to fresh servers and print how each is answered now;
    1 if any still fails, 2 if a file is not a saved case."""
    try:
        docs = [json.loads(path.read_text()) for path in paths]
        cases = [Case.from_json(doc["case"]) for doc in docs]
        kinds = {target_kind(doc["server"]) for doc in docs}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"fuzz: cannot read a saved case: {exc!r}", file=sys.stderr)
        return 2
    failed = 0
    with tempfile.TemporaryDirectory(prefix="modelgate-fuzz-") as tmp:
        workdir = Path(tmp)
        models = build_models()
        reference = light_reference(models["light"], workdir)
        targets = start_targets(workdir, models, reference, kinds, case_timeout, memory)
        try:
            for path, doc, case in zip(paths, docs, cases, strict=True):
                target = targets[target_kind(doc["server"])]
                reply = send(target, case)
                verdict = judge(target, reply)
                failed += bool(verdict.failures)
                klass, signature = verdict.klass, verdict.signature
                print(table.replay_line(path, reply, klass, verdict.failures, signature))
                if verdict.log_text.strip():
                    print("  log: " + verdict.log_text.strip().replace("\n", "\n  log: ")[:3000])
                recover(target, verdict, reply, case_timeout)
        finally:
            for target in targets.values():
                target.stop()
    return 1 if failed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cli = argparse.ArgumentParser(
        prog="python -m loadtest.fuzz",
        description=(sys.modules["loadtest.fuzz"].__doc__ or "").splitlines()[0],
    )
    add = cli.add_argument
    add("--cases", type=int, default=2000, help="cases per decoder (default 2000)")
    add("--seed", type=int, default=0, help="the run's seed (default 0)")
    add("--time-limit", type=float, default=600.0, help="seconds in all (default 600)")
    add("--decoder", action="append", choices=DECODERS, help="only this one (repeatable)")
    add("--check-every", type=int, default=50, help="cases between good requests (default 50)")
    add("--case-timeout", type=float, default=10.0, help="seconds before a hang (default 10)")
    add("--server-memory", type=float, default=6.0, help="GiB per server, 0: no cap (default 6)")
    add("--save-dir", type=Path, default=report.RESULTS, help="where fuzz-<decoder>/ go")
    add("--save-limit", type=int, default=20, help="failing cases saved per decoder")
    add("--markdown", action="store_true", help="also print a Markdown table")
    add("--out", type=Path, help="JSON results file")
    add("--replay", nargs="+", type=Path, metavar="CASE.json", help="resend saved cases")
    args = cli.parse_args(argv)
    if args.cases < 0 or args.check_every < 1 or args.save_limit < 0 or args.server_memory < 0:
        cli.error(
            "--cases, --save-limit and --server-memory must not be negative; --check-every >= 1"
        )
    if args.time_limit <= 0 or args.case_timeout <= 0:
        cli.error("--time-limit and --case-timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Fuzz (or replay); 0 when nothing failed, 1 when something did, 2 on a usage error."""
    args = parse_args(argv)
    try:
        if args.replay:
            return replay(args.replay, args.case_timeout, args.server_memory)
        opts = Options(
            cases=args.cases,
            seed=args.seed,
            time_limit=args.time_limit,
            decoders=tuple(dict.fromkeys(args.decoder or DECODERS)),
            check_every=args.check_every,
            case_timeout=args.case_timeout,
            save_dir=args.save_dir,
            save_limit=args.save_limit,
            server_memory=args.server_memory,
        )
        return run(opts, args.markdown, args.out or report.results_path("fuzz"))
    except ServerError as exc:
        print(f"fuzz: a server did not start: {exc}", file=sys.stderr)
        return 1
