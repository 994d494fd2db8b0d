"""Write the held-out files used by the calibration benchmark (BENCHMARKS.md, Calibration).

SST-2: 1,000 rows of the GLUE training split that `--max-train-samples 4000` and `10000` with
seed 0 never train on, for fitting the temperature and tuning the threshold.
AG News: a 500-row validation split taken out of train.tsv (the rest stays for training), and
the first 1,000 and 2,000 rows of the shuffled test split.

    python benchmarks/make_calibration_splits.py ../shared/data OUTDIR
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np


def sst2_held_out(data: Path, out: Path, rows_wanted: int = 1000) -> None:
    lines = (data / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    # The same draw as gptclf's --max-train-samples with --seed 0.
    used = set()
    for subset in (4000, 10000):
        used |= set(np.random.default_rng(0).choice(len(rows), subset, replace=False).tolist())
    free = [i for i in range(len(rows)) if i not in used]
    picked = sorted(np.random.default_rng(1).choice(free, rows_wanted, replace=False))
    (out / "sst2_calibration.tsv").write_text("\n".join([header] + [rows[i] for i in picked]) + "\n", encoding="utf-8")


def agnews_splits(data: Path, out: Path) -> None:
    train = (data / "agnews" / "train.tsv").read_text(encoding="utf-8").splitlines()
    random.Random(0).shuffle(train)
    (out / "agnews_val.tsv").write_text("\n".join(train[:500]) + "\n", encoding="utf-8")
    (out / "agnews_val300.tsv").write_text("\n".join(train[:300]) + "\n", encoding="utf-8")
    (out / "agnews_train.tsv").write_text("\n".join(train[500:]) + "\n", encoding="utf-8")
    test = (data / "agnews" / "test.tsv").read_text(encoding="utf-8").splitlines()
    random.Random(0).shuffle(test)
    for size in (1000, 2000):
        (out / f"agnews_test{size}.tsv").write_text("\n".join(test[:size]) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    data, out = Path(argv[0]), Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    sst2_held_out(data, out)
    agnews_splits(data, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
