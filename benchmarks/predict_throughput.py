"""Prediction throughput: gptclf vs transformers' text-classification pipeline vs one text at a time.

Every method scores the same classifier on the SST-2 validation texts with the same batch size:

- gptclf: ``Classifier.predict_proba`` with its defaults (LoRA merged, texts sorted by length,
  each batch padded to its own longest text, ``torch.inference_mode``, dtype ``auto``: bf16
  autocast where the hardware multiplies bf16 natively, else fp32);
- gptclf-fp32: the same with ``dtype="fp32"``;
- pipeline: ``transformers.pipeline("text-classification")`` as users write it, in fp32, over a
  ``*ForSequenceClassification`` model built from the same base model, carrying the same LoRA
  weights (merged) and the same head;
- pipeline-bf16: the same pipeline called under ``torch.autocast(dtype=torch.bfloat16)``;
- one text at a time: ``Classifier.predict_proba([text])`` with gptclf's defaults, in a loop, on
  the first ``--single-limit`` texts.

Each method runs in its own subprocess, so its peak RSS (model load included) is its own. The
report gives samples/s, peak RSS and the speed-ups of gptclf over the pipeline: each with its
defaults, fp32 against fp32, and bf16 against bf16. Where gptclf's default resolves to bf16, it
also gives the label agreement of the default with fp32. The largest probability difference
between the pipeline and gptclf in fp32 shows that both score the same classifier. gptclf's
probabilities here leave out its stored temperature, which the pipeline does not know; dividing
the logits by it costs nothing measurable.

    python benchmarks/predict_throughput.py --classifier runs/sst2
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sst2" / "validation.tsv"
DEFAULT_CLASSIFIER = "runs/sst2"  # the output of the SST-2 training command in the README
# gptclf and the pipeline run back to back, so the two methods compared most closely run under similar load.
METHODS = ("gptclf", "pipeline", "gptclf-fp32", "pipeline-bf16", "one-at-a-time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifier", default=DEFAULT_CLASSIFIER, help=f"Classifier folder (default {DEFAULT_CLASSIFIER}); it is copied, never changed.")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="Data file with a text column (default: SST-2 validation).")
    parser.add_argument("--batch-size", type=int, default=32, help="Texts per forward pass, for gptclf and the pipeline (default 32).")
    parser.add_argument("--limit", type=int, help="Score only the first N texts (default: all).")
    parser.add_argument("--single-limit", type=int, default=100, help="Texts scored one at a time (default 100).")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"Comma-separated subset of {','.join(METHODS)}.")
    parser.add_argument("--threads", type=int, help="torch threads per method (default: torch's default, one per core).")
    parser.add_argument("--json-out", help="Also write the results as JSON here.")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--texts-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)

    data = Path(args.data)
    if not data.is_file():
        print(f"skipping the prediction benchmark: {data} not found (SST-2 validation texts are needed)")
        return 0
    if not (Path(args.classifier) / "gptclf.json").is_file():
        print(f"skipping the prediction benchmark: no classifier at {args.classifier}; train one or pass --classifier")
        return 0
    from gptclf.data import read_texts

    texts = read_texts(data)[1][: args.limit]
    with tempfile.TemporaryDirectory(prefix="gptclf-bench-") as tmp:
        classifier = shutil.copytree(args.classifier, Path(tmp) / "classifier")
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(texts))
        results = {}
        for method in args.methods.split(","):
            results[method] = run_in_subprocess(method, classifier, texts_file, args)
            result = results[method]
            print(f"{method}: {result['samples_per_s']:.1f} samples/s, {result['samples_per_cpu_s']:.1f} per CPU-second, "
                  f"peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
    report = summarise(results, args, len(texts))
    print(format_report(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def run_in_subprocess(method: str, classifier: Path, texts_file: Path, args) -> dict:
    command = [sys.executable, __file__, "--worker", method, "--classifier", str(classifier), "--texts-file", str(texts_file),
               "--batch-size", str(args.batch_size), "--single-limit", str(args.single_limit)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"benchmark worker {method!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_worker(args) -> int:
    texts = json.loads(Path(args.texts_file).read_text())
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker == "one-at-a-time":
        texts = texts[: args.single_limit]
    score = load_method(args.worker, args.classifier, args.batch_size)
    score(texts[:4])  # warm-up: first-call allocations and lazy initialisation
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    probs = score(texts)
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - cpu_start
    result = {
        "method": args.worker,
        "dtype": score.dtype,
        "rows": len(texts),
        "seconds": seconds,
        "samples_per_s": len(texts) / seconds,
        # CPU time varies less than wall time when other processes share the machine.
        "samples_per_cpu_s": len(texts) / cpu_seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # ru_maxrss is in KiB on Linux
        "probabilities": np.asarray(probs).round(6).tolist(),
    }
    print(json.dumps(result))
    return 0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_method(method: str, folder: str, batch_size: int):
    """Return a function that maps a list of texts to probabilities, (n, C), in input order."""
    from gptclf import Classifier

    if method in ("gptclf", "gptclf-fp32"):
        classifier = Classifier.load(folder, dtype="fp32" if method == "gptclf-fp32" else "auto")
        return _tagged(lambda texts: classifier.predict_proba(texts, batch_size=batch_size, calibrated=False), classifier.dtype)
    if method == "one-at-a-time":
        classifier = Classifier.load(folder)
        return _tagged(lambda texts: np.concatenate([classifier.predict_proba([text], calibrated=False) for text in texts]), classifier.dtype)
    if method in ("pipeline", "pipeline-bf16"):
        return load_pipeline(folder, batch_size, bf16=method == "pipeline-bf16")
    raise SystemExit(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def _tagged(score, dtype: str):
    """Attach to a scoring function the dtype it computes in, for the report."""
    score.dtype = dtype
    return score


def load_pipeline(folder: str, batch_size: int, bf16: bool = False):
    """Build transformers' text-classification pipeline over the same base model, LoRA weights and head."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from gptclf.backbone import ModelSource, _local_folder
    from gptclf.checkpoint import read_meta

    meta = read_meta(folder)
    base_folder = _local_folder(ModelSource(meta.base_model["kind"], meta.base_model["reference"]))
    tokenizer = AutoTokenizer.from_pretrained(base_folder)
    tokenizer.pad_token = meta.tokenizer["pad_token"]
    model = AutoModelForSequenceClassification.from_pretrained(
        base_folder, num_labels=len(meta.labels), dtype=torch.float32,
        id2label=dict(enumerate(meta.labels)), label2id={n: i for i, n in enumerate(meta.labels)},
    )
    model.config.pad_token_id = tokenizer.pad_token_id

    # The adapter was saved on the bare decoder; under *ForSequenceClassification the decoder
    # sits one level down, at `base_model_prefix` (`model` for Llama, `transformer` for GPT-2).
    adapter = Path(folder) / "adapter"
    peft_model = get_peft_model(model, LoraConfig.from_pretrained(str(adapter)))
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    renamed = {k.replace("base_model.model.", f"base_model.model.{model.base_model_prefix}.", 1): v for k, v in saved.items()}
    loaded = set_peft_model_state_dict(peft_model, renamed)
    if loaded.unexpected_keys:
        raise SystemExit(f"adapter tensors not used by the pipeline model: {loaded.unexpected_keys[:3]}")
    model = peft_model.merge_and_unload()

    head = load_file(str(Path(folder) / "head.safetensors"))
    score = torch.nn.Linear(head["weight"].shape[1], head["weight"].shape[0], bias=True)  # gptclf's head has a bias
    score.load_state_dict(head)
    model.score = score
    model.eval()
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu", top_k=None)

    def score_texts(texts):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs = classify(texts, batch_size=batch_size, truncation=True, max_length=meta.max_length)
        return np.array([[{o["label"]: o["score"] for o in row}[name] for name in meta.labels] for row in outputs])

    return _tagged(score_texts, "bf16" if bf16 else "fp32")


def summarise(results: dict, args, n_texts: int) -> dict:
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()}, {_cpu_count()} CPU cores, Python {platform.python_version()}",
        "texts": n_texts,
        "batch_size": args.batch_size,
        "torch_threads": args.threads or "default",
        "methods": {m: {k: v for k, v in r.items() if k != "probabilities"} for m, r in results.items()},
    }
    probs = {m: np.array(r["probabilities"]) for m, r in results.items()}
    speed = {m: r["samples_per_s"] for m, r in results.items()}
    pairs = {
        "speedup_vs_pipeline": ("gptclf", "pipeline"),  # each with its defaults
        "speedup_vs_pipeline_fp32_both": ("gptclf-fp32", "pipeline"),
        "speedup_vs_one_at_a_time": ("gptclf", "one-at-a-time"),
    }
    if results.get("gptclf", {}).get("dtype") == "bf16":
        pairs["speedup_vs_pipeline_bf16_both"] = ("gptclf", "pipeline-bf16")
    for key, (ours, theirs) in pairs.items():
        if ours in speed and theirs in speed:
            report[key] = speed[ours] / speed[theirs]
    if "gptclf-fp32" in probs and "pipeline" in probs:
        report["max_prob_diff_pipeline_vs_gptclf_fp32"] = float(np.abs(probs["pipeline"] - probs["gptclf-fp32"]).max())
    if "gptclf" in probs and "gptclf-fp32" in probs and results["gptclf"]["dtype"] != "fp32":
        agree = probs["gptclf"].argmax(1) == probs["gptclf-fp32"].argmax(1)
        report["default_vs_fp32_label_agreement"] = float(agree.mean())
        report["default_vs_fp32_label_disagreements"] = int((~agree).sum())
        report["default_vs_fp32_max_prob_diff"] = float(np.abs(probs["gptclf"] - probs["gptclf-fp32"]).max())
    return report


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def format_report(report: dict) -> str:
    lines = [f"{report['texts']} texts, batch size {report['batch_size']}, torch threads {report['torch_threads']}, {report['machine']}", "",
             "| method | dtype | texts | samples/s | samples per CPU-second | peak RSS (MiB) |", "|---|---|---:|---:|---:|---:|"]
    for method, r in report["methods"].items():
        lines.append(f"| {method} | {r['dtype']} | {r['rows']} | {r['samples_per_s']:.1f} | {r['samples_per_cpu_s']:.1f} | {r['peak_rss_mib']:.0f} |")
    for key, value in report.items():
        if key.startswith(("speedup_", "default_vs_", "max_prob_")):
            lines.append(f"{key}: {value:.4g}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
