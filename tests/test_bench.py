"""The training-throughput benchmark, run on the tiny in-process models for two steps."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import sentiment_rows, write_tsv

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "train_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_throughput"] = module
    spec.loader.exec_module(module)
    return module


def write_jsonl(path: Path, rows) -> Path:
    lines = [json.dumps({"text": text, "label": int(label == "positive")}) for text, label in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_sst2_folder(folder: Path) -> Path:
    folder.mkdir()
    for name, count, seed in (("train", 40, 1), ("validation", 16, 2)):
        rows = [(text, int(label == "positive")) for text, label in sentiment_rows(count, seed=seed)]
        write_tsv(folder / f"{name}.tsv", rows, header=("sentence", "label"))
    return folder


def test_every_system_trains_two_steps(bench, base_model, tmp_path):
    train_file = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(32, seed=1))
    validation_file = write_jsonl(tmp_path / "validation.jsonl", sentiment_rows(16, seed=2))
    for system in bench.SYSTEMS:
        spec = bench.RunSpec(
            system=system, model=str(base_model), train_file=str(train_file), validation_file=str(validation_file),
            output_dir=str(tmp_path / system), steps=2, batch_size=4, seed=0, dtype="fp32", threads=1,
        )
        result = bench.measure_system(spec)
        assert result.steps == 2, system
        assert result.rows == 8, system
        assert result.seconds > 0, system
        assert 0 < result.tokens_real <= result.tokens_processed, system
        assert result.attention_real <= result.attention_processed, system
        assert 0.0 <= result.accuracy <= 1.0, system
        assert result.peak_rss_mib > 0, system
        if system == "hf-pad-128":
            assert result.tokens_processed == 8 * bench.PAD_TO_LENGTH


def test_token_counter_reads_attention_mask(bench):
    counter = bench.TokenCounter()
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # (batch, seq_len)
    counter.record(mask)
    assert counter.batches == 1
    assert counter.rows == 2
    assert counter.processed == 8
    assert counter.real == 5
    assert counter.attention_processed == 2 * 4**2
    assert counter.attention_real == 3**2 + 2**2


class MaskEcho(torch.nn.Module):
    def forward(self, input_ids, attention_mask):
        return attention_mask


def test_token_counter_skips_eval_calls(bench):
    layer = MaskEcho()
    counter = bench.TokenCounter()
    counter.attach(layer)
    mask = torch.ones(2, 3, dtype=torch.long)
    layer.eval()
    layer(torch.zeros(1), attention_mask=mask)
    assert counter.batches == 0
    layer.train()
    layer(torch.zeros(1), attention_mask=mask)
    assert counter.batches == 1
    counter.detach()
    layer(torch.zeros(1), attention_mask=mask)
    assert counter.batches == 1


def test_flops_formula_matches_hand_count(bench, base_models):
    flops = bench.DecoderFlops.from_model_folder(str(base_models["llama"]))
    # Two layers of hidden 32, 4 heads of 8 (2 KV heads), MLP 64: Q and O 32x32, K and V 32x16,
    # gate, up and down 32x64 each.
    per_layer = 2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64
    assert flops.linear_weights == 2 * per_layer
    assert flops.layers == 2
    assert flops.attention_width == 32
    assert flops.train_flops(tokens=10, attention=100) == 4 * 2 * per_layer * 10 + 12 * 2 * 32 * 100


def test_rounds_rotate_system_order(bench):
    systems = ["a", "b", "c"]
    assert bench.rotated(systems, 0) == ["a", "b", "c"]
    assert bench.rotated(systems, 1) == ["b", "c", "a"]
    assert bench.rotated(systems, 3) == ["a", "b", "c"]


def test_report_shows_ratios_to_gptclf(bench):
    flops = bench.DecoderFlops(linear_weights=1000, layers=2, attention_width=8)
    runs = [
        bench.RunResult("gptclf", seconds=2.0, steps=2, rows=32, tokens_processed=400, tokens_real=380,
                        attention_processed=4000, attention_real=3600, accuracy=0.8, peak_rss_mib=500),
        bench.RunResult("hf-standard", seconds=4.0, steps=2, rows=32, tokens_processed=800, tokens_real=380,
                        attention_processed=9000, attention_real=3600, accuracy=0.75, peak_rss_mib=600),
    ]
    summary = bench.summarise(runs, flops, peak_gflops={"fp32": 1.0, "bf16": 2.0})
    assert summary["gptclf"]["samples_per_s"] == 16.0
    assert summary["hf-standard"]["pad_fraction"] == pytest.approx(420 / 800)
    settings = {
        "command": "python benchmarks/train_throughput.py --steps 2", "rows": 32, "batch_size": 16, "steps": 2,
        "dtype": "fp32", "threads": 2, "device": "CPU", "repeats": 1, "validation_rows": 8, "matmul_peak_gflops": {"fp32": 1.0, "bf16": 2.0},
    }
    report = bench.format_report(settings, summary)
    assert "| gptclf (defaults) | fp32 | 16.0 | 190 | 5% |" in report
    assert "| HF Trainer, dynamic padding | 2.00x | 2.00x | +5.0 points |" in report


def test_default_dtype_per_system(bench):
    assert bench.system_dtype("default", "gptclf") == "auto"
    assert bench.system_dtype("default", "hf-standard") == "fp32"
    assert bench.system_dtype("bf16", "hf-standard") == "bf16"


def test_peak_share_per_dtype(bench):
    flops = bench.DecoderFlops(linear_weights=1000, layers=2, attention_width=8)
    run = dict(seconds=1.0, steps=1, rows=4, tokens_processed=100, tokens_real=100, attention_processed=0, attention_real=0)
    runs = [bench.RunResult("gptclf", dtype="bf16", **run), bench.RunResult("hf-standard", dtype="fp32", **run)]
    summary = bench.summarise(runs, flops, peak_gflops={"fp32": 1e-3, "bf16": 2e-3})
    assert summary["gptclf"]["share_of_peak"] == pytest.approx(summary["hf-standard"]["share_of_peak"] / 2)
    assert summary["gptclf"]["share_of_fp32_peak"] == pytest.approx(summary["hf-standard"]["share_of_fp32_peak"])


def test_missing_data_skips_with_message(bench, tmp_path, capsys):
    assert bench.main(["--data", str(tmp_path / "absent")]) == 0
    assert "skipped: SST-2 train.tsv and validation.tsv not found" in capsys.readouterr().out


def test_unknown_system_exits_with_choices(bench):
    with pytest.raises(SystemExit, match="unknown system 'fast'; choose from gptclf"):
        bench.main(["--systems", "gptclf,fast"])


@pytest.mark.slow
def test_script_runs_end_to_end(bench, base_models, tmp_path, capsys, monkeypatch):
    # A small matmul keeps the peak measurement quick; the run itself is a real subprocess.
    monkeypatch.setattr(bench, "MATMUL_SIZE", 256)
    data = write_sst2_folder(tmp_path / "sst2")
    out = tmp_path / "bench.json"
    argv = [
        "--data", str(data), "--model", str(base_models["gpt2"]), "--systems", "gptclf", "--steps", "2",
        "--batch-size", "4", "--rows", "16", "--validation-rows", "8", "--repeats", "1", "--threads", "1",
        "--json-out", str(out),
    ]
    assert bench.main(argv) == 0
    report = capsys.readouterr().out
    assert "| gptclf (defaults) |" in report
    saved = json.loads(out.read_text())
    assert [run["system"] for run in saved["runs"]] == ["gptclf"]
    assert saved["runs"][0]["rows"] == 8
    assert saved["settings"]["matmul_peak_gflops"]["fp32"] > 0
    assert saved["runs"][0]["dtype"] in ("fp32", "bf16")  # gptclf's auto, resolved on this machine
