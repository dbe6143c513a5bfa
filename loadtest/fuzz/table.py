"""The fuzzer's table (per decoder: cases, answer classes, failures, log bytes) and notes,
laid out by the loadtest tools' common frame (loadtest/report.py)."""

from __future__ import annotations

from pathlib import Path

from loadtest import report
from loadtest.fuzz.outcome import CLASSES, FAILURES, Tally
from loadtest.fuzz.wire import Reply

HEADERS: tuple[str, ...] = ("decoder", "cases", *CLASSES, *FAILURES, "failures", "log bytes")
HEADERS += ("log B/case", "good checks", "s")
LEFT = 1  # the decoder's name; the rest are numbers


def cells(t: Tally) -> list[str]:
    per_case = t.log_bytes / t.cases if t.cases else 0.0
    return [
        t.decoder,
        f"{t.cases:,}",
        *(f"{t.counts.get(name, 0):,}" for name in (*CLASSES, *FAILURES)),
        f"{t.failures:,}",
        f"{t.log_bytes:,}",
        f"{per_case:.1f}",
        f"{t.good_checks:,}",
        f"{t.seconds:.0f}",
    ]


def rows(tallies: list[Tally]) -> list[list[str]]:
    """One row per decoder and a total."""
    total = Tally("total")
    for t in tallies:
        total.cases += t.cases
        total.failures += t.failures
        total.log_bytes += t.log_bytes
        total.good_checks += t.good_checks
        total.seconds += t.seconds
        for name, count in t.counts.items():
            total.add(name, count)
    return [cells(t) for t in [*tallies, total]]


def progress_row(t: Tally) -> str:
    return report.table_row(HEADERS, cells(t), LEFT)


def notes(tallies: list[Tally], saved: Path) -> list[str]:
    """Each decoder's distinct failure signatures, most frequent first, with the index of
    the first case that showed it (saved as `saved`/fuzz-<decoder>/case-<index>.json)."""
    lines = []
    for t in tallies:
        if t.unsent:
            lines.append(f"{t.decoder}: {t.unsent} case(s) http.client refused to send (skipped)")
        if not t.signatures:
            continue
        lines.append(f"{t.decoder}: {len(t.signatures)} distinct failure signature(s)")
        for signature, count in sorted(t.signatures.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {count:6,} x {signature}  [first: case {t.examples[signature]}]")
    if lines:
        lines.insert(0, "")
        lines.append(f"failing cases: {saved}/fuzz-<decoder>/case-<index>.json (+ .body)")
    return lines


def replay_line(
    path: Path, reply: Reply, klass: str, failures: list[str], signature: str | None
) -> str:
    """How a resent case was answered, and whether that is still a failure."""
    answer = reply.status if reply.status is not None else reply.code
    said = reply.body[:300].decode("utf-8", "replace") if reply.status is not None else reply.detail
    verdict = f"FAIL ({', '.join(failures)}): {signature}" if failures else "not a failure"
    return f"{path.name}: {klass} {answer} {said!r}\n  {verdict}"
