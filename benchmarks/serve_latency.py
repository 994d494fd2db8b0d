"""HTTP server throughput and latency at 1, 8 and 32 concurrent clients.

Starts ``gptclf serve`` as a subprocess on a free loopback port, then runs each client count
for a fixed number of requests: every client sends one SST-2 validation text per request and
waits for the response before sending the next. Reports requests/s and p50/p99 latency per level,
and checks that every request got 200.

    python benchmarks/serve_latency.py --classifier runs/sst2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sst2" / "validation.tsv"
DEFAULT_CLASSIFIER = "runs/sst2"  # the output of the SST-2 training command in the README


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifier", default=DEFAULT_CLASSIFIER, help=f"Classifier folder (default {DEFAULT_CLASSIFIER}).")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="Data file with a text column (default: SST-2 validation).")
    parser.add_argument("--clients", default="1,8,32", help="Comma-separated client counts (default 1,8,32).")
    parser.add_argument("--requests", type=int, default=96, help="Requests per client count (default 96).")
    parser.add_argument("--max-batch-size", type=int, default=32, help="Server --max-batch-size (default 32).")
    parser.add_argument("--forward-batch-size", type=int, default=16, help="Server --forward-batch-size (default 16).")
    parser.add_argument("--batch-window-ms", type=float, default=5.0, help="Server --batch-window-ms (default 5).")
    parser.add_argument("--threads", type=int, help="torch threads of the server, through OMP_NUM_THREADS (default: torch's default).")
    parser.add_argument("--json-out", help="Also write the results as JSON here.")
    args = parser.parse_args()

    if not Path(args.data).is_file():
        print(f"skipping the server benchmark: {args.data} not found (SST-2 validation texts are needed)")
        return 0
    if not (Path(args.classifier) / "gptclf.json").is_file():
        print(f"skipping the server benchmark: no classifier at {args.classifier}; train one or pass --classifier")
        return 0
    from gptclf.data import read_texts

    texts = read_texts(args.data)[1]
    server, url, server_log = start_server(args)
    try:
        levels = [asyncio.run(run_level(url, texts, int(c), args.requests)) for c in args.clients.split(",")]
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    time.sleep(0.5)  # let the drain thread read the last lines
    print("".join(line for line in server_log if "server stopped" in line) or f"(no shutdown line among {len(server_log)} server log lines)")
    print("| clients | requests | errors | requests/s | p50 latency (ms) | p99 latency (ms) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for level in levels:
        print(f"| {level['clients']} | {level['requests']} | {level['errors']} | {level['requests_per_s']:.1f} | {level['p50_ms']:.0f} | {level['p99_ms']:.0f} |")
    if args.json_out:
        report = {"command": " ".join(sys.argv), "torch_threads": args.threads or "default", "levels": levels}
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def start_server(args) -> tuple[subprocess.Popen, str, list[str]]:
    """Start `gptclf serve` on a free port; return the process, its URL and its growing log."""
    command = [sys.executable, "-m", "gptclf", "serve", args.classifier, "--host", "127.0.0.1", "--port", "0",
               "--max-batch-size", str(args.max_batch_size), "--forward-batch-size", str(args.forward_batch_size),
               "--batch-window-ms", str(args.batch_window_ms)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads)) if args.threads else None
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = server.stderr.readline()
        if not line:
            raise SystemExit(f"the server exited before it started (exit status {server.wait()})")
        found = re.search(r"running on (http://127\.0\.0\.1:\d+)", line, re.IGNORECASE)
        if found:
            # Keep draining the server's log, or a full pipe would block it.
            server_log: list[str] = []
            threading.Thread(target=lambda: server_log.extend(server.stderr), daemon=True).start()
            return server, found.group(1), server_log
    server.kill()
    raise SystemExit("the server did not start within 300 s")


async def run_level(url: str, texts: list[str], clients: int, total_requests: int) -> dict:
    import httpx

    per_client = max(1, total_requests // clients)
    latencies: list[float] = []
    errors = 0

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=clients)) as http:
        await http.post("/predict", json={"texts": texts[:1]})  # warm-up

        async def client(c: int) -> None:
            nonlocal errors
            for r in range(per_client):
                text = texts[(c * per_client + r) % len(texts)]
                start = time.perf_counter()
                response = await http.post("/predict", json={"texts": [text]})
                latencies.append((time.perf_counter() - start) * 1000.0)
                errors += response.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        seconds = time.perf_counter() - start
    p50, p99 = np.percentile(latencies, [50, 99])
    level = {"clients": clients, "requests": len(latencies), "errors": errors, "seconds": seconds,
             "requests_per_s": len(latencies) / seconds, "p50_ms": float(p50), "p99_ms": float(p99)}
    print(json.dumps(level), flush=True)
    return level


if __name__ == "__main__":
    sys.exit(main())
