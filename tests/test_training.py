"""Training loop features: accumulation, checkpointing, early stopping, resume, kill safety."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from gptclf import train
from gptclf.backbone import load_backbone, resolve_source
from gptclf.batching import collate
from gptclf.errors import ConfigError
from gptclf.model import build_classifier, enable_gradient_checkpointing
from gptclf.training_state import CHECKPOINTS_DIR, complete_checkpoints, find_resume_checkpoint

from conftest import sentiment_rows, write_tsv


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(folder / "adapter" / "adapter_model.safetensors"))
    tensors.update({f"head.{k}": v for k, v in load_file(str(folder / "head.safetensors")).items()})
    return tensors


def _assert_same_weights(a: Path, b: Path, atol: float = 1e-6):
    first, second = _weights(a), _weights(b)
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(second[name], first[name], atol=atol, rtol=0, msg=name)


@pytest.fixture
def train_file(tmp_path):
    return write_tsv(tmp_path / "train.tsv", sentiment_rows(64, seed=5))


def _options(base_model, train_file, out, **extra):
    options = dict(train=str(train_file), output=str(out), model=str(base_model), max_steps=8, batch_size=4,
                   lr=2e-2, lora_r=4, lora_dropout=0.1, seed=3, dtype="fp32")
    options.update(extra)
    return options


def test_grad_accum_counts_micro_batches(tmp_path, base_models, train_file):
    result = train(**_options(base_models["llama"], train_file, tmp_path / "a", grad_accum=2, max_steps=None, epochs=1))
    assert result.optimizer_steps == 8  # 64 rows / 4 rows per micro-batch / 2 micro-batches per step


def test_gradient_checkpointing_gives_same_lora_gradients(base_model):
    backbone = load_backbone(resolve_source(str(base_model)))
    model = build_classifier(backbone.model, 2, "last", 4, 8, 0.0, None, seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    batch = collate(backbone.tokenizer(["the film was good", "bad food , poor service"])["input_ids"], backbone.tokenizer.pad_token_id)
    target = torch.tensor([1, 0])
    grads = {}
    for checkpointing in (False, True):
        if checkpointing:
            enable_gradient_checkpointing(backbone.model)
        model.train()
        model.zero_grad()
        torch.manual_seed(0)  # the same dropout masks in both passes
        F.cross_entropy(model(**batch), target).backward()
        grads[checkpointing] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads[True].items() if "lora_" in n)
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_patience_stops_early(tmp_path, base_models, train_file):
    # One text under both labels: every prediction is right for half the rows, so validation
    # accuracy stays at 0.5 and no evaluation after the first improves.
    validation = write_tsv(tmp_path / "v.tsv", [("the film was .", label) for label in ["negative", "positive"] * 8])
    result = train(**_options(base_models["gpt2"], train_file, tmp_path / "p", validation=str(validation),
                              max_steps=20, eval_every=2, patience=2))
    assert result.optimizer_steps == 6
    assert len(result.history) == 3


def test_lora_layers_adapts_top_layers_only(base_models):
    backbone = load_backbone(resolve_source(str(base_models["llama"])))
    model = build_classifier(backbone.model, 2, "last", 4, 8, 0.0, None, seed=0, lora_layers=1)
    names = [n for n, p in model.named_parameters() if ".lora_A." in n]
    assert names
    assert all(".layers.1." in n for n in names)


def test_lora_layers_too_many_rejected(base_models):
    backbone = load_backbone(resolve_source(str(base_models["gpt2"])))
    with pytest.raises(ConfigError, match="more than the 2 layers"):
        build_classifier(backbone.model, 2, "last", 4, 8, 0.0, None, seed=0, lora_layers=3)


def test_save_every_keeps_newest(tmp_path, base_models, train_file):
    out = tmp_path / "k"
    train(**_options(base_models["gpt2"], train_file, out, save_every=2, keep_checkpoints=2))
    steps = [step for step, _ in complete_checkpoints(out / CHECKPOINTS_DIR)]
    assert steps == [4, 6]


def test_resume_matches_uninterrupted_run(tmp_path, base_model, train_file):
    whole = tmp_path / "whole"
    train(**_options(base_model, train_file, whole))
    parts = tmp_path / "parts"
    train(**_options(base_model, train_file, parts, save_every=3))
    # Roll back to step 3 as if the run had been killed there, then resume.
    for name in ("gptclf.json", "head.safetensors"):
        (parts / name).unlink()
    for step, path in complete_checkpoints(parts / CHECKPOINTS_DIR):
        if step != 3:
            import shutil

            shutil.rmtree(path)
    result = train(resume=str(parts))
    assert result.optimizer_steps == 8
    _assert_same_weights(whole, parts)


def test_resume_ignores_incomplete_checkpoints(tmp_path, base_models, train_file):
    out = tmp_path / "r"
    train(**_options(base_models["gpt2"], train_file, out, save_every=3))
    root = out / CHECKPOINTS_DIR
    (root / ".step-000007-abc").mkdir()
    (root / "step-000007").mkdir()  # no trainer_state files: a partial copy
    assert find_resume_checkpoint(out).name == "step-000006"


WORKER = """
import sys
from gptclf import train
train(**{k: (int(v) if v.isdigit() else v) for k, v in (a.split('=', 1) for a in sys.argv[1:])})
"""


def _train_process(options: dict) -> subprocess.Popen:
    args = [f"{k}={v}" for k, v in options.items()]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", WORKER, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def test_sigkill_anytime_then_resume(tmp_path, base_models, train_file):
    options = dict(train=str(train_file), model=str(base_models["llama"]), max_steps="24", batch_size="4",
                   lora_r="4", seed="3", save_every="1", keep_checkpoints="2")
    whole = tmp_path / "whole"
    done = _train_process({**options, "output": str(whole)})
    assert done.wait(timeout=300) == 0, done.stderr.read().decode()[-2000:]

    out = tmp_path / "killed"
    rng = random.Random(0)
    process = _train_process({**options, "output": str(out)})
    kills = 0
    while kills < 3:
        time.sleep(rng.uniform(0.3, 1.5))
        if process.poll() is not None:
            break
        if not complete_checkpoints(out / CHECKPOINTS_DIR):
            continue
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        process = _train_process({"resume": str(out)})
    assert process.wait(timeout=300) == 0, process.stderr.read().decode()[-2000:]
    assert kills >= 1
    _assert_same_weights(whole, out)


def _run_ranks(tmp_path, base_model, train_file, processes: int, batch_size: int, name: str) -> Path:
    dump = tmp_path / f"dump-{name}"
    dump.mkdir()
    options = [f"train={train_file}", f"output={tmp_path / name}", f"model={base_model}", "max_steps=4",
               f"batch_size={batch_size}", "lr=0.02", "lora_r=4", "lora_dropout=0.0", "seed=3", "dtype=fp32"]
    worker = str(Path(__file__).with_name("ddp_worker.py"))
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", worker, str(dump), *options]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = tmp_path / f"{name}.log"
    with log.open("w") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, timeout=300, env=env).returncode
    assert code == 0, log.read_text()[-3000:]
    return dump


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one_with_same_global_batch(tmp_path, base_models, train_file):
    base = base_models["llama"]
    two = _run_ranks(tmp_path, base, train_file, processes=2, batch_size=4, name="two")
    one = _run_ranks(tmp_path, base, train_file, processes=1, batch_size=8, name="one")
    rank0, rank1 = load_file(str(two / "rank0.safetensors")), load_file(str(two / "rank1.safetensors"))
    single = load_file(str(one / "rank0.safetensors"))
    assert rank0.keys() == rank1.keys() == single.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between ranks"
        torch.testing.assert_close(rank0[name], single[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, base_models, train_file):
    options = dict(max_steps=3, lora_dropout=0.0)
    eager = train(**_options(base_models["llama"], train_file, tmp_path / "eager", **options))
    compiled = train(**_options(base_models["llama"], train_file, tmp_path / "compiled", compile=True, **options))
    _assert_same_weights(tmp_path / "eager", tmp_path / "compiled", atol=1e-5)
    # The returned model runs eagerly again, so scoring it does not compile a second time.
    assert compiled.model.backbone._compiled_call_impl is None
    assert eager.optimizer_steps == 3
    assert compiled.optimizer_steps == 3
