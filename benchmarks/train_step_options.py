"""What each speed option buys per training step, measured side by side in one invocation.

Every variant builds the same classifier: the embedded SmolLM2-135M with gptclf's LoRA defaults.
Each draws the same length-grouped batches of SST-2 training rows and runs the same forward,
backward and AdamW step. Only the option named changes:

- fp32: no autocast.
- bf16: bf16 autocast, which gptclf's `auto` picks on CPUs with AVX-512 BF16 and on bf16 GPUs.
- bf16-no-dropout: bf16 with LoRA dropout 0 instead of 0.05.
- bf16-math-sdpa: bf16 with the plain-math SDPA kernel instead of the fused one.
- bf16-eager-attn: bf16 with transformers' eager attention instead of SDPA.
- bf16-layers-N: bf16 with LoRA on the top N decoder layers only (--lora-layers N).
- bf16-compile: bf16 with the backbone compiled by torch.compile (dynamic shapes). The compile
  time is reported separately and not counted in the rate.

Each variant runs in its own subprocess, and rounds rotate the order so machine noise falls on
all of them. The timed steps follow two warm-up steps. Rates are medians over rounds.

    python benchmarks/train_step_options.py --steps 20 --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sst2" / "train.tsv"
VARIANTS = ("fp32", "bf16", "bf16-no-dropout", "bf16-math-sdpa", "bf16-eager-attn", "bf16-layers-15", "bf16-layers-4")
WARMUP_STEPS = 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="Labelled training file (default: SST-2 train).")
    parser.add_argument("--rows", type=int, default=2000, help="Seeded random training rows to draw batches from (default 2000).")
    parser.add_argument("--batch-size", type=int, default=16, help="Rows per step (default 16).")
    parser.add_argument("--steps", type=int, default=20, help="Timed optimizer steps per variant (default 20).")
    parser.add_argument("--repeats", type=int, default=2, help="Rounds, each running every variant once (default 2).")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="Comma-separated variants; add bf16-compile to measure torch.compile (minutes of compiling).")
    parser.add_argument("--json-out", help="Also write the results as JSON here.")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_variant(args.worker, args)))
        return 0
    if not Path(args.data).is_file():
        print(f"skipping the step-options benchmark: {args.data} not found (SST-2 train.tsv is needed)")
        return 0

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for round_index in range(args.repeats):
        shift = round_index % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            result = run_in_subprocess(variant, args)
            results[variant].append(result)
            print(f"round {round_index + 1}: {variant}: {result['samples_per_s']:.1f} samples/s", flush=True)
    print(format_report(results, args))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"argv": sys.argv[1:], "results": results}, indent=2) + "\n")
    return 0


def run_in_subprocess(variant: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", variant, "--data", args.data, "--rows", str(args.rows),
               "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"variant {variant!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_variant(variant: str, args) -> dict:
    """Build the classifier for one variant, run warm-up and timed steps, return the rates."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from gptclf.backbone import load_backbone, resolve_source
    from gptclf.batching import collate, encode, length_grouped_batches
    from gptclf.config import ModelConfig
    from gptclf.data import read_labelled
    from gptclf.inference import autocast_context
    from gptclf.model import build_classifier

    defaults = ModelConfig()
    backbone = load_backbone(resolve_source(None))
    if variant == "bf16-eager-attn":
        backbone.model.set_attn_implementation("eager")
    layers = int(variant.rsplit("-", 1)[1]) if variant.startswith("bf16-layers-") else None
    dropout = 0.0 if variant == "bf16-no-dropout" else defaults.lora_dropout
    classifier = build_classifier(backbone.model, 2, "last", defaults.lora_r, defaults.lora_alpha, dropout,
                                  defaults.lora_targets, seed=0, lora_layers=layers)
    compile_seconds = None
    if variant == "bf16-compile":
        start = time.perf_counter()
        classifier.backbone.compile(dynamic=True)

    texts, labels = _rows(read_labelled, args.data, args.rows)
    ids = encode(backbone.tokenizer, texts, 128).ids
    lengths = np.array([len(x) for x in ids])
    batches = length_grouped_batches(lengths, args.batch_size, np.random.default_rng(0))
    needed = WARMUP_STEPS + args.steps
    if len(batches) < needed:
        raise SystemExit(f"--rows {args.rows} gives only {len(batches)} batches, but warm-up plus --steps needs {needed}; raise --rows or lower --steps")
    labels = torch.as_tensor(labels)
    params = [p for p in classifier.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    dtype = "fp32" if variant == "fp32" else "bf16"
    def kernel():  # a fresh context per step: these context managers cannot be entered twice
        return sdpa_kernel(SDPBackend.MATH) if variant == "bf16-math-sdpa" else contextlib.nullcontext()
    device = torch.device("cpu")

    def step(rows) -> int:
        batch = collate([ids[i] for i in rows], backbone.tokenizer.pad_token_id)
        with kernel(), autocast_context(device, dtype):
            logits = classifier(**batch)
        loss = torch.nn.functional.cross_entropy(logits, labels[rows])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum())

    classifier.train()
    for rows in batches[:WARMUP_STEPS]:
        step(rows)
    if variant == "bf16-compile":
        compile_seconds = time.perf_counter() - start
    start, tokens, rows_done = time.perf_counter(), 0, 0
    for rows in batches[WARMUP_STEPS:needed]:
        tokens += step(rows)
        rows_done += len(rows)
    seconds = time.perf_counter() - start
    return {"variant": variant, "samples_per_s": rows_done / seconds, "real_tokens_per_s": tokens / seconds,
            "seconds": seconds, "compile_and_warmup_seconds": compile_seconds}


def _rows(read_labelled, path: str, count: int) -> tuple[list[str], np.ndarray]:
    """Draw a seeded random subset of a labelled file's texts, with labels as class indices."""
    _, texts, raw = read_labelled(path, None, None)
    names = sorted(set(raw))
    labels = np.array([names.index(v) for v in raw])
    pick = np.sort(np.random.default_rng(0).choice(len(texts), min(count, len(texts)), replace=False))
    return [texts[i] for i in pick], labels[pick]


def format_report(results: dict[str, list[dict]], args) -> str:
    rate = {v: statistics.median(r["samples_per_s"] for r in runs) for v, runs in results.items()}
    lines = [f"{args.rows} SST-2 rows, batch {args.batch_size}, {args.steps} timed steps, {args.repeats} round(s); medians", "",
             "| variant | samples/s | real tokens/s | vs fp32 | vs bf16 |", "|---|---:|---:|---:|---:|"]
    for variant, runs in results.items():
        tokens = statistics.median(r["real_tokens_per_s"] for r in runs)
        vs = [f"{rate[variant] / rate[base]:.2f}x" if base in rate else "-" for base in ("fp32", "bf16")]
        lines.append(f"| {variant} | {rate[variant]:.1f} | {tokens:.0f} | {vs[0]} | {vs[1]} |")
    compiled = [r["compile_and_warmup_seconds"] for r in results.get("bf16-compile", [])]
    if compiled:
        lines.append(f"\nbf16-compile: compiling plus {WARMUP_STEPS} warm-up steps took {statistics.median(compiled):.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
