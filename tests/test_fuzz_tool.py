"""The decoder fuzzer (`python -m loadtest.fuzz`) end to end: a real gateway and a real
registry server as subprocesses, a few cases per decoder, the table and the summary."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from loadtest.bench import REPO
from loadtest.fuzz.run import DECODERS, build_decoders

CASES = 50
# Decoders that a long run (docs/hardening.md, "after") found no failure in: any failure
# of theirs is a regression. Since issue 14's fixes, every decoder.
CLEAN = DECODERS


def test_every_decoder_is_fuzzed_and_reported(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    argv = [sys.executable, "-m", "loadtest.fuzz", "--cases", str(CASES), "--check-every", "25",
            "--time-limit", "400", "--save-dir", str(tmp_path), "--out", str(out),
            "--markdown"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=500, cwd=REPO)
    said = f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert done.returncode in (0, 1) and out.exists(), said
    tallies = {t["decoder"]: t for t in json.loads(out.read_text())["decoders"]}
    assert list(tallies) == list(DECODERS)
    for name, tally in tallies.items():
        table_row = next(
            line for line in done.stdout.splitlines() if line.startswith(f"| {name} |")
        )
        assert table_row.split(" | ")[1] == str(CASES), table_row
        assert tally["cases"] == CASES and tally["good_checks"] == CASES // 25
        classes = ("ok", "refused", "shed", "5xx", "reset", "hang")  # one per case
        assert sum(tally["counts"].get(c, 0) for c in classes) == CASES, tally
        if name in CLEAN:
            assert tally["failures"] == 0, said
        saved = list((tmp_path / f"fuzz-{name}").glob("case-*.json"))
        assert min(tally["failures"], 20) <= len(saved) <= min(tally["failures"], 40), name
    failed = any(t["failures"] for t in tallies.values())
    assert done.returncode == (1 if failed else 0), said


def test_a_case_depends_only_on_seed_decoder_and_index(tmp_path: Path) -> None:
    decoders, _, _ = build_decoders(tmp_path)
    for name, decoder in decoders.items():
        first = [decoder.case(random.Random(f"3:{name}:{i}")) for i in range(40)]
        again = [decoder.case(random.Random(f"3:{name}:{i}")) for i in range(40)]
        assert first == again, name
        assert len(set(first)) > 30, name  # and the cases do differ
