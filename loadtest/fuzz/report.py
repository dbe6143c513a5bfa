"""The fuzzer's tables: per decoder cases, answer classes, failures and log bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtest.fuzz.outcome import CLASSES, FAILURES, Tally
from loadtest.fuzz.wire import Reply

_COLUMNS: tuple[str, ...] = ("decoder", "cases", *CLASSES, *FAILURES, "failures")
_COLUMNS += ("log bytes", "log B/case", "good checks", "s")


def _row(t: Tally) -> list[str]:
    per_case = t.log_bytes / t.cases if t.cases else 0.0
    return [
        t.decoder,
        str(t.cases),
        *(str(t.counts.get(name, 0)) for name in (*CLASSES, *FAILURES)),
        str(t.failures),
        str(t.log_bytes),
        f"{per_case:.1f}",
        str(t.good_checks),
        f"{t.seconds:.0f}",
    ]


def table(tallies: list[Tally], opts: Any) -> str:
    """A text table and the same as Markdown, with the run's settings above them."""
    rows = [_row(t) for t in tallies]
    total = Tally("total")
    for t in tallies:
        total.cases += t.cases
        total.failures += t.failures
        total.log_bytes += t.log_bytes
        total.good_checks += t.good_checks
        total.seconds += t.seconds
        for name, count in t.counts.items():
            total.add(name, count)
    rows.append(_row(total))
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(_COLUMNS)]
    lines = [
        f"seed {opts.seed}, up to {opts.cases} cases per decoder, a good request every "
        f"{opts.check_every}, case timeout {opts.case_timeout:g} s, "
        f"time limit {opts.time_limit:g} s",
        "  ".join(c.rjust(w) for c, w in zip(_COLUMNS, widths, strict=True)),
    ]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    lines += ["", "| " + " | ".join(_COLUMNS) + " |", "|---" + "|---:" * (len(_COLUMNS) - 1) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def signatures(tallies: list[Tally], out: Path) -> str:
    """Each decoder's distinct failure signatures, most frequent first, with the case index
    of the first (saved under `out`/fuzz-<decoder>/case-<index>.json)."""
    lines = []
    for t in tallies:
        if not t.signatures:
            continue
        lines.append(f"\n{t.decoder}: {len(t.signatures)} distinct failure signature(s)")
        for signature, count in sorted(t.signatures.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {count:6d} x {signature}  [first: case {t.examples[signature]}]")
    if lines:
        lines.append(f"\nfailing cases: {out}/fuzz-<decoder>/case-<index>.json (+ .body)")
    return "\n".join(lines)


def progress_line(t: Tally) -> str:
    return (
        f"{t.decoder}: {t.cases} cases in {t.seconds:.0f} s, {t.failures} failures, "
        f"{len(t.signatures)} signatures, {t.log_bytes} log bytes"
    )


def replay_line(
    path: Path, reply: Reply, klass: str, failures: list[str], signature: str | None
) -> str:
    answer = reply.status if reply.status is not None else reply.code
    said = reply.body[:300].decode("utf-8", "replace") if reply.status is not None else reply.detail
    verdict = f"FAIL ({', '.join(failures)}): {signature}" if failures else "ok"
    return f"{path.name}: {klass} {answer} {said!r}\n  {verdict}"
