"""Benchmark results: the records, medians over repeats, the ratios the targets need, tables.

Text and Markdown tables share one column list, so the table in docs/performance.md and the
terminal output cannot drift apart.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

NAN = float("nan")


@dataclass(frozen=True, slots=True)
class PointResult:
    """One server, model, protocol and concurrency under load; rows/s = req/s (1 row each)."""

    model: str
    server: str
    protocol: str
    batching: str
    concurrency: int
    requests_per_second: float = NAN
    p50_ms: float = NAN
    p99_ms: float = NAN
    loadgen_cpu_percent: float = NAN
    server_cpu_percent: float = NAN
    error: str = ""

    @property
    def key(self) -> tuple[str, str, str, str, int]:
        return (self.model, self.server, self.protocol, self.batching, self.concurrency)

    @property
    def rows_per_second(self) -> float:
        return self.requests_per_second


@dataclass(frozen=True, slots=True)
class CeilingResult:
    """In-process ONNX Runtime throughput of one model: best batch, and at the gateway's cap."""

    model: str
    best_rows_per_second: float
    best_batch: int
    rows_per_second_at_64: float


def median_points(runs: Sequence[Sequence[PointResult]]) -> list[PointResult]:
    """Per point, the median of each number over the runs that measured it without error."""
    order: list[tuple[str, str, str, str, int]] = []
    groups: dict[tuple[str, str, str, str, int], list[PointResult]] = {}
    for run in runs:
        for point in run:
            if point.key not in groups:
                order.append(point.key)
            groups.setdefault(point.key, []).append(point)
    return [_median_point(groups[key]) for key in order]


def _median_point(points: list[PointResult]) -> PointResult:
    good = [p for p in points if not p.error]
    if not good:
        return points[-1]

    def med(get: Callable[[PointResult], float]) -> float:
        return statistics.median(get(p) for p in good)

    return replace(
        good[0],
        requests_per_second=med(lambda p: p.requests_per_second),
        p50_ms=med(lambda p: p.p50_ms),
        p99_ms=med(lambda p: p.p99_ms),
        loadgen_cpu_percent=med(lambda p: p.loadgen_cpu_percent),
        server_cpu_percent=med(lambda p: p.server_cpu_percent),
    )


def median_ceilings(runs: Sequence[Sequence[CeilingResult]]) -> list[CeilingResult]:
    """Per model, the median ceiling over the runs (the best batch of the median run)."""
    by_model: dict[str, list[CeilingResult]] = {}
    for run in runs:
        for ceiling in run:
            by_model.setdefault(ceiling.model, []).append(ceiling)
    result = []
    for items in by_model.values():
        ranked = sorted(items, key=lambda c: c.best_rows_per_second)
        middle = ranked[len(ranked) // 2]
        result.append(
            replace(
                middle,
                best_rows_per_second=statistics.median(c.best_rows_per_second for c in items),
                rows_per_second_at_64=statistics.median(c.rows_per_second_at_64 for c in items),
            )
        )
    return result


# --- ratios and targets -------------------------------------------------------------------


def _find(points: Sequence[PointResult], *key: str | int) -> PointResult | None:
    for point in points:
        if point.key == key and not point.error:
            return point
    return None


def ratios(points: Sequence[PointResult], ceilings: Sequence[CeilingResult]) -> list[str]:
    """The comparisons the issue's targets are stated in, one line each (missing: skipped)."""
    lines = []
    gw_grpc = _find(points, "light", "gateway", "grpc", "on", 64)
    for variant in ("bare_grpc", "bare_grpc/uvloop", "bare_grpc/sync"):
        bare = _find(points, "light", variant, "grpc", "-", 64)
        if gw_grpc and bare:
            lines.append(
                f"light gRPC c64: gateway / {variant} = {_ratio(gw_grpc, bare):.2f} "
                f"({gw_grpc.requests_per_second:,.0f} / {bare.requests_per_second:,.0f} req/s)"
            )
    gw_http = _find(points, "light", "gateway", "http", "on", 64)
    bare_http = _find(points, "light", "bare_http", "http", "-", 64)
    if gw_http and bare_http:
        lines.append(f"light HTTP c64: gateway / bare_http = {_ratio(gw_http, bare_http):.2f}")
    for protocol in ("grpc", "http"):
        on = _find(points, "light", "gateway", protocol, "on", 64)
        off = _find(points, "light", "gateway/monitoring-off", protocol, "on", 64)
        if on and off:
            lines.append(
                f"light {protocol} c64: drift monitoring on / off = {_ratio(on, off):.3f} "
                f"({on.requests_per_second:,.0f} / {off.requests_per_second:,.0f} req/s)"
            )
    heavy_on = _find(points, "heavy", "gateway", "grpc", "on", 64)
    heavy_off = _find(points, "heavy", "gateway", "grpc", "off", 64)
    ceiling = next((c for c in ceilings if c.model == "heavy"), None)
    if heavy_on and ceiling:
        share = heavy_on.rows_per_second / ceiling.best_rows_per_second
        lines.append(
            f"heavy gRPC c64: gateway rows/s / in-process ceiling = {share:.2f} "
            f"({heavy_on.rows_per_second:,.0f} / {ceiling.best_rows_per_second:,.0f}"
            f" at batch {ceiling.best_batch})"
        )
    if heavy_on and heavy_off:
        lines.append(f"heavy gRPC c64: batching on / off = {_ratio(heavy_on, heavy_off):.2f}")
    return lines


def targets(points: Sequence[PointResult], ceilings: Sequence[CeilingResult]) -> list[str]:
    """The issue's targets, each marked met or missed (skipped when a point is missing)."""
    checks: list[tuple[str, bool]] = []
    http = _find(points, "light", "gateway", "http", "on", 64)
    if http:
        ok = http.requests_per_second >= 5000 and http.p99_ms < 25
        checks.append(("light HTTP JSON c64 >= 5,000 req/s, p99 < 25 ms", ok))
    grpc = _find(points, "light", "gateway", "grpc", "on", 64)
    bare = _find(points, "light", "bare_grpc", "grpc", "-", 64)
    if grpc and bare:
        ok = _ratio(grpc, bare) >= 0.9 and grpc.p99_ms < 40
        checks.append(("light gRPC c64 >= 90% of bare grpc.aio, p99 < 40 ms", ok))
    heavy_on = _find(points, "heavy", "gateway", "grpc", "on", 64)
    heavy_off = _find(points, "heavy", "gateway", "grpc", "off", 64)
    ceiling = next((c for c in ceilings if c.model == "heavy"), None)
    if heavy_on and ceiling:
        ok = heavy_on.rows_per_second >= 0.7 * ceiling.best_rows_per_second
        checks.append(("heavy c64 >= 70% of in-process ceiling rows/s", ok))
    if heavy_on and heavy_off:
        checks.append(("heavy c64 batching on >= 3x off", _ratio(heavy_on, heavy_off) >= 3))
    return [f"[{'met' if ok else 'MISSED'}] {text}" for text, ok in checks]


def _ratio(a: PointResult, b: PointResult) -> float:
    return a.requests_per_second / b.requests_per_second if b.requests_per_second else NAN


# --- tables -------------------------------------------------------------------------------

_HEADERS = (
    "model",
    "server",
    "proto",
    "batching",
    "conc",
    "req/s",
    "rows/s",
    "p50 ms",
    "p99 ms",
    "loadgen CPU %",
    "server CPU %",
)
_LEFT = 4  # the first four columns are text, the rest numbers


def _cells(p: PointResult) -> list[str]:
    if p.error:
        return [p.model, p.server, p.protocol, p.batching, str(p.concurrency), "error"] + [""] * 5
    return [
        p.model,
        p.server,
        p.protocol,
        p.batching,
        str(p.concurrency),
        _num(p.requests_per_second, 0),
        _num(p.rows_per_second, 0),
        _num(p.p50_ms, 2),
        _num(p.p99_ms, 2),
        _num(p.loadgen_cpu_percent, 0),
        _num(p.server_cpu_percent, 0),
    ]


def _num(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def text_grid(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int) -> str:
    """A fixed-width table for the terminal: the first `left` columns are text (left-aligned),
    the rest numbers (right-aligned)."""
    grid = [list(headers), *(list(r) for r in rows)]
    widths = [max(len(row[i]) for row in grid) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )

    return "\n".join([line(grid[0]), "  ".join("-" * w for w in widths), *map(line, grid[1:])])


def markdown_grid(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int) -> str:
    """The same table as GitHub Markdown, numbers right-aligned."""
    align = ["---"] * left + ["---:"] * (len(headers) - left)
    return "\n".join("| " + " | ".join(row) + " |" for row in [list(headers), align, *rows])


def text_table(points: Sequence[PointResult]) -> str:
    """A fixed-width table for the terminal; errors are listed under it."""
    out = [text_grid(_HEADERS, [_cells(p) for p in points], _LEFT)]
    out += [f"error: {' '.join(map(str, p.key))}: {p.error}" for p in points if p.error]
    return "\n".join(out)


def markdown_table(points: Sequence[PointResult]) -> str:
    """The same table as GitHub Markdown, numbers right-aligned."""
    return markdown_grid(_HEADERS, [_cells(p) for p in points], _LEFT)


def table_row(headers: Sequence[str], row: Sequence[str], left: int) -> str:
    """One row as `text_grid` would lay it out alone: a progress line."""
    return text_grid(headers, [row], left).splitlines()[-1]


def finish_header(header: dict[str, str], started: float) -> dict[str, str]:
    """A tool run's header lines (the machine at the start and its own) with the commit, the
    wall time since `started` (monotonic) and the load average at the end added."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    wall = f"{time.monotonic() - started:.0f} s"
    return {**header, "commit": revision(), "wall time": wall, "load_average_at_end": load}


def print_run(
    header: dict[str, str],
    table: tuple[Sequence[str], Sequence[Sequence[str]], int],
    notes: Sequence[str],
    markdown: bool,
) -> None:
    """A tool run's output: header lines, the table (headers, rows, text columns), notes
    under it, and the table again as Markdown if asked."""
    print()
    for key, value in header.items():
        print(f"{key}: {value}")
    print()
    print(text_grid(*table))
    for note in notes:
        print(note)
    if markdown:
        print()
        print(markdown_grid(*table))


RESULTS = Path(__file__).resolve().parent / "results"  # gitignored


def results_path(tool: str) -> Path:
    """Where a run of `tool` keeps its JSON: loadtest/results/<tool>-<timestamp>.json."""
    return RESULTS / f"{tool}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def revision() -> str:
    """The checkout's commit, with "+changes" when the work tree differs from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=RESULTS.parent)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Strict JSON (NaN, a number not measured, as null) in `path`, folders created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(doc), indent=2, allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def ceiling_lines(ceilings: Sequence[CeilingResult]) -> list[str]:
    """One line per model's in-process ceiling."""
    return [
        f"{c.model}: best {c.best_rows_per_second:,.0f} rows/s at batch {c.best_batch}; "
        f"{c.rows_per_second_at_64:,.0f} rows/s at batch 64 (the gateway's default cap)"
        for c in ceilings
    ]


# --- machine --------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "python": platform.python_version(),
        "onnxruntime": _version("onnxruntime"),
        "grpcio": _version("grpcio"),
        "uvicorn": _version("uvicorn"),
        "load_average_at_start": " ".join(f"{x:.2f}" for x in load),
    }


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"
