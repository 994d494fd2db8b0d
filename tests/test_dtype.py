import pytest
import torch

from gptclf import inference
from gptclf.errors import ConfigError
from gptclf.inference import resolve_dtype

CPU = torch.device("cpu")


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_dtype_follows_cpu_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: native)
    assert resolve_dtype("auto", CPU) == expected


@pytest.mark.parametrize("name", ["fp32", "bf16"])
def test_explicit_dtype_kept(monkeypatch, name):
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype(name, CPU) == name


def test_unknown_dtype_rejected():
    with pytest.raises(ConfigError, match="--dtype must be auto, fp32 or bf16, got 'fp16'"):
        resolve_dtype("fp16", CPU)


def test_cpu_flag_reader_bool():
    assert isinstance(inference.cpu_has_native_bf16(), bool)

