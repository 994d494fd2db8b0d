import json
import subprocess
import sys

import pandas as pd
import pytest

from gptclf.cli import main

from conftest import sentiment_rows, write_tsv


def _train_args(base_model, train, validation, out, *extra):
    return [
        "train", "--train", str(train), "--validation", str(validation), "--output", str(out),
        "--model", str(base_model), "--max-steps", "6", "--batch-size", "8", "--lr", "0.05",
        "--lora-r", "4", "--eval-every", "3", *extra,
    ]


@pytest.fixture
def trained_cli(tmp_path, base_models, toy_data):
    train, validation = toy_data
    out = tmp_path / "clf"
    assert main(_train_args(base_models["llama"], train, validation, out)) == 0
    return out, validation


def test_train_command_writes_classifier(trained_cli, capsys):
    out, _ = trained_cli
    assert (out / "gptclf.json").is_file()
    meta = json.loads((out / "gptclf.json").read_text())
    assert meta["labels"] == ["negative", "positive"] or meta["labels"] == ["positive", "negative"]
    assert meta["metrics"]["validation"]["accuracy"] >= 0


def test_train_rejects_non_empty_output(trained_cli, base_models, capsys):
    out, validation = trained_cli
    code = main(_train_args(base_models["llama"], validation, validation, out))
    assert code == 2
    assert "--output" in capsys.readouterr().err


def test_evaluate_command_prints_table_and_json(trained_cli, tmp_path, capsys):
    out, validation = trained_cli
    json_out = tmp_path / "metrics.json"
    assert main(["evaluate", str(out), "--data", str(validation), "--json-out", str(json_out)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy:" in printed
    assert "confusion matrix" in printed
    assert "ROC-AUC" in printed
    metrics = json.loads(json_out.read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert set(metrics["per_class"]) == {"negative", "positive"}
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == 32
    assert metrics["roc_auc"] is not None


def test_predict_command_prints_texts(trained_cli, capsys):
    out, _ = trained_cli
    assert main(["predict", str(out), "the film was great", "the food was awful"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["text"] for r in lines] == ["the film was great", "the food was awful"]
    for record in lines:
        assert record["label"] in ("negative", "positive")
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)


def test_predict_texts_after_option(trained_cli, capsys):
    out, _ = trained_cli
    assert main(["predict", str(out), "--dtype", "fp32", "the film was great", "the food was awful"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["text"] for r in lines] == ["the film was great", "the food was awful"]


def test_unknown_option_rejected(trained_cli, capsys):
    out, _ = trained_cli
    with pytest.raises(SystemExit):
        main(["predict", str(out), "the film was great", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_predict_command_writes_file_in_input_order(trained_cli, tmp_path, suffix):
    out, _ = trained_cli
    rows = sentiment_rows(20, seed=7)
    source = tmp_path / "input.tsv"
    write_tsv(source, [(t, str(i)) for i, (t, _) in enumerate(rows)], header=("text", "id"))
    target = tmp_path / f"predictions{suffix}"
    assert main(["predict", str(out), "--input", str(source), "--output", str(target)]) == 0
    frame = pd.read_csv(target) if suffix == ".csv" else pd.read_json(target, lines=True)
    assert frame["text"].tolist() == [t for t, _ in rows]
    assert frame["id"].astype(str).tolist() == [str(i) for i in range(20)]
    assert set(frame["prediction"]) <= {"negative", "positive"}
    assert (frame["prob_negative"] + frame["prob_positive"]).round(4).eq(1.0).all()


def test_config_errors_reported_together(tmp_path, capsys):
    code = main(["train", "--train", str(tmp_path / "missing.tsv"), "--output", str(tmp_path / "o"),
                 "--lora-r", "zero", "--lr", "-1", "--batch-size", "0", "--pooling", "max"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--lora-r: 'zero' is not a valid integer" in err


def test_config_value_errors_name_each_flag(tmp_path, capsys):
    code = main(["train", "--train", str(tmp_path / "missing.tsv"), "--output", str(tmp_path / "o"),
                 "--lr", "-1", "--batch-size", "0", "--pooling", "max", "--lora-dropout", "1.5"])
    err = capsys.readouterr().err
    assert code == 2
    for expected in ("--train", "file not found", "--lr", "--batch-size", "--pooling", "--lora-dropout"):
        assert expected in err


def test_module_entry_point_shows_help():
    done = subprocess.run([sys.executable, "-m", "gptclf", "train", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert "--lora-alpha" in done.stdout
    assert "alpha / r" in done.stdout
