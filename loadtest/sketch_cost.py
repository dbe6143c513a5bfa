"""What a batch sketch costs on the serving path: µs per `Sketcher.sketch` call on the light
model (32 FP32 inputs, label and two probabilities), for batches of 1 and 64 rows.

    python -m loadtest.sketch_cost
"""

from __future__ import annotations

import functools
import timeit

import numpy as np

from loadtest.drift_quality import LightTraffic
from modelgate.monitor.sketch import Sketcher


def main() -> None:
    rng = np.random.default_rng(1)
    traffic = LightTraffic()
    sketcher = Sketcher(traffic.reference(rng))
    for rows in (1, 8, 64):
        run = functools.partial(sketcher.sketch, *traffic.rows(rng, rows))
        runs = timeit.repeat(run, number=2000, repeat=7)
        print(f"{rows:>3} rows: {min(runs) / 2000 * 1e6:.1f} µs per sketch")
    sketch = sketcher.sketch(*traffic.rows(rng, 64))
    runs = timeit.repeat(lambda: sketch + sketch, number=5000, repeat=7)
    print(f"merge: {min(runs) / 5000 * 1e6:.1f} µs")


if __name__ == "__main__":
    main()
