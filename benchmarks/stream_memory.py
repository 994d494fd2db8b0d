"""Peak memory of `gptclf predict --input` as the input file grows.

Trains the tiny two-layer Llama classifier the tests use, which needs no download and takes
seconds. Then writes a JSONL file per requested row count, each row with a 200-character extra
column, and scores it with the `gptclf predict` command in its own process (one torch thread,
fp32). Reports rows, file size, time, the rows in the output and that process's peak RSS.

    python benchmarks/stream_memory.py 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
WORDS = ["good", "bad", "the film was", "dull", "really great fun", "an utterly forgettable and overlong second act"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", type=int, nargs="+", help="Row counts to score, one file each, in this order.")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from conftest import save_base_model, sentiment_rows, write_tsv

    from gptclf import train

    gptclf_command = shutil.which("gptclf") or str(Path(sys.executable).with_name("gptclf"))
    with tempfile.TemporaryDirectory(prefix="gptclf-stream-") as tmp:
        root = Path(tmp)
        base = save_base_model(root / "base", "llama")
        data = write_tsv(root / "train.tsv", sentiment_rows(32, seed=3))
        classifier = root / "clf"
        train(train=str(data), output=str(classifier), model=str(base), max_steps=2, batch_size=8, lora_r=4)
        print("| rows | file size (MiB) | seconds | output rows | peak RSS (MiB) |\n|---:|---:|---:|---:|---:|", flush=True)
        for count in args.rows:
            source = write_rows(root / f"rows-{count}.jsonl", count)
            target = root / f"out-{count}.csv"
            print(measure(gptclf_command, classifier, source, target, count), flush=True)
            source.unlink()
            target.unlink()
    return 0


def write_rows(path: Path, count: int) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            text = f"{WORDS[i % len(WORDS)]} {WORDS[(i * 7) % len(WORDS)]} ."
            handle.write(json.dumps({"id": i, "text": text, "payload": "x" * 200}) + "\n")
    return path


def measure(command: str, classifier: Path, source: Path, target: Path, count: int) -> str:
    """Score one file in a child process and return its table row."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = target.with_suffix(".log")
    start = time.perf_counter()
    with log.open("w") as handle:
        child = subprocess.Popen([command, "predict", str(classifier), "--input", str(source), "--output", str(target), "--dtype", "fp32"],
                                 stdout=handle, stderr=subprocess.STDOUT, env=env)
        # wait4 returns this child's own resource usage, so each file gets its own peak.
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"gptclf predict failed on {count} rows:\n{log.read_text()[-2000:]}")
    peak_mib = usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux
    with target.open(encoding="utf-8") as handle:
        output_rows = sum(1 for _ in handle) - 1  # minus the header
    return f"| {count:,} | {source.stat().st_size / 2**20:.1f} | {seconds:.1f} | {output_rows:,} | {peak_mib:.1f} |"


if __name__ == "__main__":
    sys.exit(main())
