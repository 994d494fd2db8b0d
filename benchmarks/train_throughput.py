"""Training throughput of gptclf against the standard Hugging Face LoRA recipe, on the same rows.

Every system trains the same base model with the same training rows, LoRA settings (gptclf's
defaults for r, alpha, dropout and the Q/K/V targets), batch size, seed, learning-rate schedule
and number of optimizer steps:

  gptclf             ``gptclf.train()`` with its defaults, without validation
  hf-standard        ``AutoModelForSequenceClassification`` + PEFT LoRA (task type SEQ_CLS) +
                     ``Trainer`` with ``DataCollatorWithPadding`` and random batches
  hf-pad-128         the same recipe with every row padded to 128 tokens (``padding="max_length"``)
  hf-length-grouped  the standard recipe with ``train_sampling_strategy="group_by_length"``

With ``--dtype default`` (the default) each system runs as its users would run it: gptclf with
its ``auto`` dtype (bf16 autocast where the hardware multiplies bf16 natively, else fp32) and the
Trainer recipes with the Trainer's default, fp32. ``--dtype fp32`` or ``--dtype bf16`` puts every
system on that dtype, for a comparison at equal precision.

Each run is a subprocess, so the peak RSS it reports is its own. Each round rotates the order of
the systems (A B C D, then B C D A, ...) so machine noise falls on all of them. Training time is
the optimizer-step loop only, so model loading, tokenisation and validation are not timed.

Runs much shorter than an epoch favour gptclf's samples/s against hf-length-grouped, because
the transformers 5.25 ``LengthGroupedSampler`` starts with the batch holding the longest row and
walks each mega-batch (up to 50 batches) from long rows to short ones. Compare real tokens/s there.

Model FLOPs of a training step count the matmuls of the frozen decoder, from its config:

    FLOPs = 4 * P * N + 12 * L * A * S

P is the number of weights in the decoder's linear layers (Q, K, V, O and the MLP; embeddings
are lookups and no LM head runs), N the tokens processed, L the layers, A = heads * head_dim,
and S the sum over batches of batch * seq_len**2. Forward, a linear layer costs 2 FLOPs per
weight per token, and the attention scores (Q K^T) and the weighted sum of V cost 2 * seq_len * A
each per token and layer. Backward, the frozen linear layers compute input gradients only, one
matmul the size of the forward one, so they cost 2x forward in all. The two attention matmuls
multiply activations, so backward needs gradients of both operands and they cost 3x forward.
Left out: the LoRA matrices (under 1% at r = 8), norms, softmax, the head and any recomputation.

"GFLOP/s" counts all processed tokens, real and pad (N and S over padded batches). "% of peak"
counts only the work real tokens need (N = real tokens, S = sum of each row's length squared) and
divides it by the ``torch.mm`` peak of the dtype that system computed in, measured in the same
invocation.

Run ``python benchmarks/train_throughput.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "sst2"

SYSTEMS = ("gptclf", "hf-standard", "hf-pad-128", "hf-length-grouped")
SYSTEM_TITLES = {
    "gptclf": "gptclf (defaults)",
    "hf-standard": "HF Trainer, dynamic padding",
    "hf-pad-128": "HF Trainer, pad to 128",
    "hf-length-grouped": "HF Trainer, length-grouped",
}
PAD_TO_LENGTH = 128
VALIDATION_BATCH_SIZE = 64
MATMUL_SIZE = 2048
MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DTYPE_CHOICES = ("default", *MATMUL_DTYPES)


@dataclass
class RunSpec:
    """Everything one worker subprocess needs to train and score one system."""

    system: str
    model: str
    train_file: str
    validation_file: str
    output_dir: str
    steps: int
    batch_size: int
    seed: int
    dtype: str
    """`auto`, `fp32` or `bf16`, as passed to this system."""
    threads: int
    max_length: int = PAD_TO_LENGTH


@dataclass
class RunResult:
    """Raw counts from one training run, from which the summary derives the rates."""

    system: str
    round: int = 0
    dtype: str = "fp32"
    """The dtype the system computed in (`auto` resolved)."""
    seconds: float = 0.0
    """Wall time of the optimizer-step loop."""
    steps: int = 0
    rows: int = 0
    tokens_processed: int = 0
    """Real plus pad tokens in the training batches."""
    tokens_real: int = 0
    attention_processed: int = 0
    """Sum over batches of batch * seq_len**2."""
    attention_real: int = 0
    """Sum over rows of the real length squared."""
    accuracy: float = float("nan")
    peak_rss_mib: float = 0.0
    peak_gpu_mib: float | None = None


# ---------------------------------------------------------------- command line and rounds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train gptclf and the standard Hugging Face LoRA recipe on the same rows and compare training throughput.",
    )
    parser.add_argument("--steps", type=int, default=20, help="Optimizer steps per run (default 20).")
    parser.add_argument("--batch-size", type=int, default=16, help="Rows per optimizer step (default 16).")
    parser.add_argument("--rows", type=int, default=2000, help="Training rows, a seeded random subset of SST-2 train (default 2000).")
    parser.add_argument("--validation-rows", type=int, default=300, help="Validation rows, a seeded random subset of SST-2 validation (default 300).")
    parser.add_argument("--repeats", type=int, default=2, help="Rounds; each runs every system once, in rotated order (default 2).")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"Comma-separated systems to run (default all: {','.join(SYSTEMS)}).")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="default", help="`default`: each system's own default (gptclf `auto`, the Trainer fp32); `fp32` or `bf16`: every system in that dtype (default: default).")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for every run (default: torch's default here).")
    parser.add_argument("--seed", type=int, default=0, help="Seed for the row subsets, initialisation, batch order and dropout (default 0).")
    parser.add_argument("--model", default=None, help="Base model folder (default: the embedded SmolLM2-135M, converted to safetensors).")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="Folder with SST-2 train.tsv and validation.tsv (default ../shared/data/sst2 beside the repository).")
    parser.add_argument("--json-out", default=None, help="Also write the settings, every run and the summary as JSON to this file.")
    parser.add_argument("--verbose", action="store_true", help="Show each run's log instead of keeping it in a temporary file.")
    parser.add_argument("--worker", nargs=2, metavar=("SPEC", "RESULT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> list[str]:
    """Return the systems to run, or exit with every invalid option listed."""
    systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    problems = [f"--systems: unknown system {name!r}; choose from {', '.join(SYSTEMS)}" for name in systems if name not in SYSTEMS]
    if not systems:
        problems.append(f"--systems is empty; choose from {', '.join(SYSTEMS)}")
    for name in ("steps", "batch_size", "repeats", "validation_rows"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.rows < 2:
        problems.append(f"--rows must be at least 2, got {args.rows}")
    if args.threads is not None and args.threads < 1:
        problems.append(f"--threads must be at least 1, got {args.threads}")
    if problems:
        sys.exit("train_throughput.py: " + "; ".join(problems))
    return list(dict.fromkeys(systems))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(Path(args.worker[0]), Path(args.worker[1]))
        return 0
    systems = check_args(args)
    data = Path(args.data)
    if not (data / "train.tsv").is_file() or not (data / "validation.tsv").is_file():
        print(f"skipped: SST-2 train.tsv and validation.tsv not found in {data}; pass --data with the folder that has them")
        return 0
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    model = args.model or default_model_folder()
    flops = DecoderFlops.from_model_folder(model)

    with tempfile.TemporaryDirectory(prefix="gptclf-bench-") as workdir:
        train_file, validation_file = write_row_subsets(data, Path(workdir), args.rows, args.validation_rows, args.seed)
        base = RunSpec(
            system="", model=model, train_file=str(train_file), validation_file=str(validation_file),
            output_dir=workdir, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
            dtype=args.dtype, threads=threads,
        )
        runs, peaks = run_rounds(base, systems, args.repeats, Path(workdir), args.verbose)

    peak = {dtype: max(p[dtype] for p in peaks) for dtype in peaks[0]}
    summary = summarise(runs, flops, peak)
    settings = {
        "command": " ".join(["python", "benchmarks/train_throughput.py", *(argv if argv is not None else sys.argv[1:])]),
        "model": model, "rows": args.rows, "validation_rows": args.validation_rows, "steps": args.steps,
        "batch_size": args.batch_size, "repeats": args.repeats, "dtype": args.dtype, "threads": threads,
        "seed": args.seed, "device": device_name(), "matmul_peak_gflops": peak, "matmul_peaks_gflops": peaks,
        "system_dtypes": {system: s["dtype"] for system, s in summary.items()},
        "flops": asdict(flops),
    }
    print(format_report(settings, summary))
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        report = {"settings": settings, "summary": summary, "runs": [asdict(r) for r in runs]}
        out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def default_model_folder() -> str:
    """Return the safetensors folder that gptclf loads when --model is unset (converted once from GGUF)."""
    from gptclf.backbone import _local_folder, resolve_source

    return _local_folder(resolve_source(None))


def write_row_subsets(data: Path, workdir: Path, rows: int, validation_rows: int, seed: int) -> tuple[Path, Path]:
    """Write seeded random subsets of SST-2 train and validation as JSONL files that every system reads."""
    rng = np.random.default_rng(seed)
    paths = []
    for name, count in (("train", rows), ("validation", validation_rows)):
        table = read_sst2(data / f"{name}.tsv")
        if count > len(table):
            sys.exit(f"train_throughput.py: asked for {count} {name} rows but {data / name}.tsv has {len(table)}")
        chosen = sorted(rng.choice(len(table), count, replace=False))
        path = workdir / f"{name}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for i in chosen:
                text, label = table[i]
                handle.write(json.dumps({"text": text, "label": label}) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def read_sst2(path: Path) -> list[tuple[str, int]]:
    """Read a GLUE SST-2 TSV file (header ``sentence<TAB>label``, no quoting)."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(row["sentence"], int(row["label"])) for row in reader]


def system_dtype(requested: str, system: str) -> str:
    """Return the dtype passed to a system: `default` means gptclf's `auto` and the Trainer's fp32."""
    if requested != "default":
        return requested
    return "auto" if system == "gptclf" else "fp32"


def run_rounds(base: RunSpec, systems: list[str], repeats: int, workdir: Path, verbose: bool) -> tuple[list[RunResult], list[dict]]:
    """Run every system once per round in rotated order, measuring the matmul peaks before each round."""
    runs, peaks = [], []
    for round_index in range(repeats):
        peaks.append({dtype: measure_matmul_peak(dtype, MATMUL_SIZE) for dtype in MATMUL_DTYPES})
        order = rotated(systems, round_index)
        peak_text = ", ".join(f"{dtype} {gflops:.0f}" for dtype, gflops in peaks[-1].items())
        log_progress(f"round {round_index + 1}/{repeats}: matmul peak GFLOP/s {peak_text}, order {', '.join(order)}")
        for system in order:
            spec = RunSpec(**{**asdict(base), "system": system, "dtype": system_dtype(base.dtype, system),
                              "output_dir": str(workdir / f"{system}-{round_index}")})
            result = run_in_subprocess(spec, workdir, verbose)
            result.round = round_index
            runs.append(result)
            log_progress(
                f"  {system}: {result.rows / result.seconds:.1f} samples/s, "
                f"{100 * pad_fraction(result.tokens_processed, result.tokens_real):.0f}% padding, "
                f"validation accuracy {result.accuracy:.3f}, peak RSS {result.peak_rss_mib:.0f} MiB"
            )
    return runs, peaks


def rotated(systems: list[str], round_index: int) -> list[str]:
    """Round 0 runs A B C D, round 1 B C D A, and so on."""
    shift = round_index % len(systems)
    return systems[shift:] + systems[:shift]


def run_in_subprocess(spec: RunSpec, workdir: Path, verbose: bool) -> RunResult:
    """Train one system in a fresh Python process and read back its RunResult."""
    spec_path = workdir / f"{Path(spec.output_dir).name}-spec.json"
    result_path = workdir / f"{Path(spec.output_dir).name}-result.json"
    log_path = workdir / f"{Path(spec.output_dir).name}.log"
    spec_path.write_text(json.dumps(asdict(spec)))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path), str(result_path)]
    with log_path.open("w") as log:
        finished = subprocess.run(command, env=env, stdout=None if verbose else log, stderr=None if verbose else subprocess.STDOUT)
    if finished.returncode != 0:
        tail = "" if verbose else "\n".join(log_path.read_text().splitlines()[-30:])
        raise RuntimeError(f"the {spec.system} run failed with exit status {finished.returncode}. Its log ends:\n{tail}")
    return RunResult(**json.loads(result_path.read_text()))


def log_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def device_name() -> str:
    """Return the GPU's name, else the CPU model from /proc/cpuinfo (Linux), else "CPU"."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "CPU"


# ---------------------------------------------------------------- FLOPs and the matmul peak


@dataclass
class DecoderFlops:
    """Matmul sizes of a decoder, which determine its training FLOPs (formula in the module docstring)."""

    linear_weights: int
    """P: weights in the decoder's linear layers."""
    layers: int
    attention_width: int
    """A: attention heads times head_dim."""

    @classmethod
    def from_model_folder(cls, folder: str) -> "DecoderFlops":
        """Read the sizes from the config, building the decoder on the meta device (no weights load)."""
        from transformers import AutoConfig, AutoModel
        from transformers.pytorch_utils import Conv1D

        config = AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            model = AutoModel.from_config(config)
        linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)))
        layers = first_attribute(config, "num_hidden_layers", "n_layer")
        heads = first_attribute(config, "num_attention_heads", "n_head")
        hidden = first_attribute(config, "hidden_size", "n_embd")
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        return cls(linear_weights=linear, layers=layers, attention_width=heads * head_dim)

    def train_flops(self, tokens: int, attention: int) -> float:
        """Forward plus backward FLOPs for ``tokens`` tokens and sum of batch * seq_len**2 ``attention``."""
        return 4.0 * self.linear_weights * tokens + 12.0 * self.layers * self.attention_width * attention


def first_attribute(config, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if value:
            return int(value)
    raise ValueError(f"the {type(config).__name__} has none of {names}; pass --model with a GPT-2 or Llama-style decoder")


def measure_matmul_peak(dtype: str, size: int, blocks: int = 5, per_block: int = 3) -> float:
    """Best GFLOP/s of a square ``torch.mm`` on the benchmark's device and thread count."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, device=device).to(MATMUL_DTYPES[dtype])
    b = torch.randn(size, size, device=device).to(MATMUL_DTYPES[dtype])
    for _ in range(2):  # warm up the kernels and the allocator
        torch.mm(a, b)
    best = 0.0
    for _ in range(blocks):
        synchronize()
        start = time.perf_counter()
        for _ in range(per_block):
            torch.mm(a, b)
        synchronize()
        best = max(best, per_block * 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------- summary and report


def pad_fraction(processed: int, real: int) -> float:
    return (processed - real) / processed if processed else 0.0


def summarise(runs: list[RunResult], flops: DecoderFlops, peak_gflops: dict[str, float]) -> dict[str, dict]:
    """Per system: medians of the rates over rounds, overall padding, max RSS, mean accuracy.

    The share of peak divides by the matmul peak of the dtype the system computed in.
    """
    summary = {}
    for system in dict.fromkeys(r.system for r in runs):
        own = [r for r in runs if r.system == system]
        processed = sum(r.tokens_processed for r in own)
        real = sum(r.tokens_real for r in own)
        gflops = [flops.train_flops(r.tokens_processed, r.attention_processed) / r.seconds / 1e9 for r in own]
        useful = [flops.train_flops(r.tokens_real, r.attention_real) / r.seconds / 1e9 for r in own]
        dtype = own[0].dtype
        summary[system] = {
            "dtype": dtype,
            "samples_per_s": statistics.median(r.rows / r.seconds for r in own),
            "samples_per_s_each": [r.rows / r.seconds for r in own],
            "real_tokens_per_s": statistics.median(r.tokens_real / r.seconds for r in own),
            "pad_fraction": pad_fraction(processed, real),
            "gflops": statistics.median(gflops),
            "real_token_gflops": statistics.median(useful),
            "share_of_peak": statistics.median(useful) / peak_gflops[dtype],
            "share_of_fp32_peak": statistics.median(useful) / peak_gflops["fp32"],
            "peak_rss_mib": max(r.peak_rss_mib for r in own),
            "peak_gpu_mib": max((r.peak_gpu_mib for r in own if r.peak_gpu_mib is not None), default=None),
            "accuracy": statistics.mean(r.accuracy for r in own),
            "runs": len(own),
        }
    return summary


def format_report(settings: dict, summary: dict[str, dict]) -> str:
    """Format a Markdown report for BENCHMARKS.md with the settings, one row per system and gptclf's ratios."""
    lines = [
        f"Command: `{settings['command']}`",
        "",
        f"{settings['rows']} SST-2 training rows, batch {settings['batch_size']}, {settings['steps']} optimizer steps, "
        f"dtype {settings['dtype']}, {settings['threads']} threads on {settings['device']}, {settings['repeats']} "
        f"round{'s' if settings['repeats'] > 1 else ''} (rates are medians over rounds); validation accuracy on {settings['validation_rows']} SST-2 validation rows; "
        "matmul peak " + ", ".join(f"{dtype} {gflops:.0f} GFLOP/s" for dtype, gflops in settings["matmul_peak_gflops"].items())
        + f" (torch.mm {MATMUL_SIZE}x{MATMUL_SIZE}).",
        "",
        "| system | dtype | train samples/s | real tokens/s | padding | GFLOP/s | real-token FLOPs, % of its dtype's peak | % of fp32 peak | peak RSS (MiB) | val accuracy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for system, s in summary.items():
        lines.append(
            f"| {SYSTEM_TITLES[system]} | {s['dtype']} | {s['samples_per_s']:.1f} | {s['real_tokens_per_s']:.0f} | {100 * s['pad_fraction']:.0f}% "
            f"| {s['gflops']:.0f} | {100 * s['share_of_peak']:.0f}% | {100 * s['share_of_fp32_peak']:.0f}% | {s['peak_rss_mib']:.0f} | {s['accuracy']:.3f} |"
        )
    if "gptclf" in summary and len(summary) > 1:
        ours = summary["gptclf"]
        lines += ["", "| gptclf against | train samples/s | real tokens/s | val accuracy |", "|---|---:|---:|---:|"]
        for system, s in summary.items():
            if system == "gptclf":
                continue
            lines.append(
                f"| {SYSTEM_TITLES[system]} | {ours['samples_per_s'] / s['samples_per_s']:.2f}x "
                f"| {ours['real_tokens_per_s'] / s['real_tokens_per_s']:.2f}x "
                f"| {100 * (ours['accuracy'] - s['accuracy']):+.1f} points |"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------- worker: one system, one process


def run_worker(spec_path: Path, result_path: Path) -> None:
    spec = RunSpec(**json.loads(spec_path.read_text()))
    result = measure_system(spec)
    result_path.write_text(json.dumps(asdict(result)))


def measure_system(spec: RunSpec) -> RunResult:
    """Train one system for ``spec.steps`` optimizer steps, then score the validation rows."""
    torch.set_num_threads(spec.threads)
    train_texts, train_labels = read_jsonl(spec.train_file)
    validation_texts, validation_labels = read_jsonl(spec.validation_file)
    if spec.system == "gptclf":
        return measure_gptclf(spec, validation_texts, validation_labels)
    if spec.system in SYSTEMS:
        return measure_hf_recipe(spec, train_texts, train_labels, validation_texts, validation_labels)
    raise ValueError(f"unknown system {spec.system!r}; choose from {', '.join(SYSTEMS)}")


def read_jsonl(path: str) -> tuple[list[str], list[int]]:
    with open(path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    return [r["text"] for r in rows], [int(r["label"]) for r in rows]


@dataclass
class TokenCounter:
    """Tokens seen by a model's training forward passes, read from their attention masks."""

    batches: int = 0
    rows: int = 0
    processed: int = 0
    real: int = 0
    attention_processed: int = 0
    attention_real: int = 0
    handles: list = field(default_factory=list, repr=False)

    def record(self, attention_mask: torch.Tensor) -> None:
        batch, seq_len = attention_mask.shape  # (batch, seq_len)
        lengths = attention_mask.sum(dim=1).tolist()
        self.batches += 1
        self.rows += batch
        self.processed += batch * seq_len
        self.real += int(sum(lengths))
        self.attention_processed += batch * seq_len**2
        self.attention_real += int(sum(n * n for n in lengths))

    def attach(self, module: torch.nn.Module) -> None:
        """Count every training-mode call of ``module``."""
        self.handles.append(module.register_forward_pre_hook(self._pre_hook, with_kwargs=True))

    def attach_on_first_call(self, module_type: type) -> None:
        """Count calls of the first ``module_type`` instance, for models built inside code we do not control.

        A global forward hook receives the first call (and counts it), attaches a per-instance
        hook and removes itself, so later steps pay no global-hook cost.
        """

        def first_call(module, args, kwargs, output):
            if isinstance(module, module_type) and not self.handles:
                self._pre_hook(module, args, kwargs)
                self.attach(module)
                global_handle.remove()

        global_handle = torch.nn.modules.module.register_module_forward_hook(first_call, with_kwargs=True)

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _pre_hook(self, module, args, kwargs) -> None:
        if not module.training:
            return
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask = args[1]
        if mask is None:
            raise RuntimeError(f"{type(module).__name__} was called without an attention mask, so its tokens cannot be counted")
        self.record(mask)


def measure_gptclf(spec: RunSpec, validation_texts: list[str], validation_labels: list[int]) -> RunResult:
    """Train with ``gptclf.train`` (all defaults except steps, batch size, seed, dtype and model)."""
    import gptclf
    from gptclf.batching import encode
    from gptclf.inference import resolve_dtype, score_ids
    from gptclf.model import GPTClassifier

    counter = TokenCounter()
    counter.attach_on_first_call(GPTClassifier)
    trained = gptclf.train(
        train=spec.train_file, output=spec.output_dir, overwrite=True, model=spec.model,
        max_steps=spec.steps, batch_size=spec.batch_size, seed=spec.seed, dtype=spec.dtype,
        max_length=spec.max_length,
    )
    counter.detach()
    # NOTE: TrainResult.seconds would include evaluation passes if training validated, so this run
    # passes no validation file and scores the validation rows afterwards.
    result = counted_result(spec, counter, trained.seconds, trained.optimizer_steps)
    result.dtype = resolve_dtype(spec.dtype, next(trained.model.parameters()).device)

    tokenizer = load_tokenizer(spec.model)
    ids = encode(tokenizer, validation_texts, spec.max_length).ids
    logits = score_ids(trained.model, ids, tokenizer.pad_token_id, VALIDATION_BATCH_SIZE, result.dtype)
    result.accuracy = float((logits.argmax(axis=-1) == np.asarray(validation_labels)).mean())
    return result


def measure_hf_recipe(
    spec: RunSpec, train_texts: list[str], train_labels: list[int], validation_texts: list[str], validation_labels: list[int]
) -> RunResult:
    """Train with the recipe of the transformers and PEFT docs: sequence-classification model + LoRA + Trainer."""
    from transformers import DataCollatorWithPadding, Trainer, set_seed

    set_seed(spec.seed)
    tokenizer = load_tokenizer(spec.model)
    model = hf_lora_model(spec, num_labels=max(train_labels) + 1, pad_token_id=tokenizer.pad_token_id)

    padding = "max_length" if spec.system == "hf-pad-128" else False
    encoded = tokenizer(train_texts, truncation=True, max_length=spec.max_length, padding=padding)
    train_dataset = [
        {"input_ids": ids, "attention_mask": mask, "labels": label}
        for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], train_labels)
    ]
    args = hf_training_arguments(spec)
    clock = TrainClock()
    trainer = Trainer(
        model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer), callbacks=[clock],
    )
    counter = TokenCounter()
    counter.attach(model)
    trainer.train()
    counter.detach()
    result = counted_result(spec, counter, clock.seconds, trainer.state.global_step)
    result.dtype = spec.dtype
    result.accuracy = hf_accuracy(model, tokenizer, validation_texts, validation_labels, spec)
    return result


def hf_lora_model(spec: RunSpec, num_labels: int, pad_token_id: int):
    """``AutoModelForSequenceClassification`` with PEFT LoRA on the Q/K/V projections gptclf picks."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from gptclf.config import ModelConfig
    from gptclf.model import find_lora_targets

    model = AutoModelForSequenceClassification.from_pretrained(spec.model, num_labels=num_labels, dtype=torch.float32)
    model.config.pad_token_id = pad_token_id
    defaults = ModelConfig()
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=defaults.lora_r,
        lora_alpha=defaults.lora_alpha,
        lora_dropout=defaults.lora_dropout,
        target_modules=find_lora_targets(model, defaults.lora_targets),
    )
    return get_peft_model(model, lora)


def hf_training_arguments(spec: RunSpec):
    """Build Trainer settings that match gptclf's optimizer defaults, with no logging, evaluation or saving."""
    from transformers import TrainingArguments

    from gptclf.config import OptimConfig

    optim = OptimConfig()
    return TrainingArguments(
        output_dir=spec.output_dir,
        per_device_train_batch_size=spec.batch_size,
        max_steps=spec.steps,
        learning_rate=optim.lr,
        weight_decay=optim.weight_decay,
        # gptclf rounds the warmup length to the nearest step but Trainer rounds a ratio up, so pass steps.
        warmup_steps=int(round(spec.steps * optim.warmup_ratio)),
        lr_scheduler_type="linear",
        max_grad_norm=optim.max_grad_norm,
        seed=spec.seed,
        bf16=spec.dtype == "bf16",
        train_sampling_strategy="group_by_length" if spec.system == "hf-length-grouped" else "random",
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


class TrainClock(TrainerCallback):
    """Wall time from the Trainer's first training step to its last, like gptclf's loop time."""

    def __init__(self):
        self.start = 0.0
        self.seconds = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        synchronize()
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        synchronize()
        self.seconds = time.perf_counter() - self.start


@torch.inference_mode()
def hf_accuracy(model, tokenizer, texts: list[str], labels: list[int], spec: RunSpec) -> float:
    """Score rows sorted by length and padded per batch; return the accuracy of the predicted classes."""
    from gptclf.batching import collate, sorted_batches
    from gptclf.inference import autocast_context

    model.eval()
    device = next(model.parameters()).device
    ids = tokenizer(texts, truncation=True, max_length=spec.max_length)["input_ids"]
    lengths = np.array([len(x) for x in ids])
    predictions = np.zeros(len(ids), dtype=np.int64)
    for rows in sorted_batches(lengths, VALIDATION_BATCH_SIZE):
        batch = {k: v.to(device) for k, v in collate([ids[i] for i in rows], tokenizer.pad_token_id).items()}
        with autocast_context(device, spec.dtype):
            logits = model(**batch).logits  # (batch, classes)
        predictions[rows] = logits.argmax(dim=-1).cpu().numpy()
    return float((predictions == np.asarray(labels)).mean())


def load_tokenizer(folder: str):
    """Load the model's tokenizer and set EOS as its pad token when it has none, as gptclf and most recipes do."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def counted_result(spec: RunSpec, counter: TokenCounter, seconds: float, steps: int) -> RunResult:
    if counter.batches != steps:
        raise RuntimeError(
            f"{spec.system}: counted {counter.batches} training forward passes for {steps} optimizer steps, so the token "
            "counts do not match the timed steps; count the batches another way for this training loop"
        )
    result = RunResult(
        system=spec.system, seconds=seconds, steps=steps, rows=counter.rows,
        tokens_processed=counter.processed, tokens_real=counter.real,
        attention_processed=counter.attention_processed, attention_real=counter.attention_real,
    )
    # ru_maxrss is in KiB on Linux (bytes on macOS). The high-water mark covers loading and training.
    result.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        result.peak_gpu_mib = torch.cuda.max_memory_allocated() / 2**20
    return result


if __name__ == "__main__":
    sys.exit(main())
