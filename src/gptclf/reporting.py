"""Report folders: metrics, figures, an HTML page and the most confidently wrong rows.

``gptclf evaluate --report OUTDIR`` writes::

    metrics.json                   every metric, calibration figures and the decision rule
    classification_report.txt      scikit-learn's per-class table and the confusion matrix
    confusion_matrix.png           counts and row-normalised
    roc_curve.png, pr_curve.png    positive class (binary) or one class vs rest
    reliability.png                reliability diagrams before and after temperature scaling
    confidence_histogram.png       top-label confidence, correct vs wrong
    misclassified.csv              the most confidently wrong rows
    report.html                    all of the above on one page, with the model's configuration

Training writes ``training_loss.png`` and ``validation_metrics.png`` beside the classifier.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import classification_report

from . import figures
from .checkpoint import TRAIN_LOG_FILE
from .evaluation import ScoredFile, format_metrics, write_json
from .inference import Classifier
from .tracking import read_train_log

log = logging.getLogger(__name__)

MAX_MISCLASSIFIED = 100
HTML_WRONG_ROWS = 20
# Figure file name -> caption, in the order the HTML page shows them.
REPORT_FIGURES = {
    "confusion_matrix.png": "Confusion matrix: counts, and each row normalised by its true-label total.",
    "roc_curve.png": "ROC curve (binary: positive class; multi-class: each class against the rest).",
    "pr_curve.png": "Precision-recall curve (binary: positive class; multi-class: each class against the rest).",
    "reliability.png": "Reliability diagram before and after temperature scaling. Bars that reach the diagonal are perfectly calibrated, and the number in each bar is its row count.",
    "confidence_histogram.png": "Calibrated probability of the predicted label, for correct and wrong predictions.",
}


def write_evaluation_report(outdir: str | Path, classifier: Classifier, scored: ScoredFile, metrics: dict) -> Path:
    """Write the report folder for one scored file and return the path of ``report.html``."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    labels = classifier.labels
    probs = scored.probs
    predictions = classifier.decide(probs, metrics["decision"].get("threshold"))

    write_json(metrics, outdir / "metrics.json")
    text_report = classification_report(
        scored.targets, predictions, labels=list(range(len(labels))), target_names=labels, digits=4, zero_division=0
    )
    (outdir / "classification_report.txt").write_text(text_report + "\n" + format_metrics(metrics) + "\n", encoding="utf-8")

    matrix = np.asarray(metrics["confusion_matrix"]["matrix"])
    figures.plot_confusion_matrix(matrix, labels, outdir / "confusion_matrix.png")
    threshold = metrics["decision"].get("threshold")
    figures.plot_roc_curves(scored.targets, probs, labels, outdir / "roc_curve.png", threshold)
    figures.plot_pr_curves(scored.targets, probs, labels, outdir / "pr_curve.png", threshold)
    figures.plot_reliability(scored.targets, scored.uncalibrated_probs, probs, scored.temperature, outdir / "reliability.png")
    figures.plot_confidence_histogram(scored.targets, probs, outdir / "confidence_histogram.png", predictions)

    wrong = confidently_wrong(scored, probs, predictions, labels)
    wrong.to_csv(outdir / "misclassified.csv", index=False)
    page = outdir / "report.html"
    page.write_text(render_html(metrics, classifier, list(REPORT_FIGURES), wrong, text_report), encoding="utf-8")
    log.info("report written to %s", outdir)
    return page


def confidently_wrong(scored: ScoredFile, probs: np.ndarray, predictions: np.ndarray, labels: list[str], limit: int = MAX_MISCLASSIFIED) -> pd.DataFrame:
    """Select the wrong predictions with the highest predicted-label probability, most confident first."""
    rows = np.flatnonzero(predictions != scored.targets)
    predicted_prob = probs[rows, predictions[rows]]
    rows = rows[np.argsort(-predicted_prob, kind="stable")][:limit]
    return pd.DataFrame({
        "row": rows + 1,  # 1-based data row, as in gptclf's error messages
        "text": [scored.texts[i] for i in rows],
        "true_label": [labels[scored.targets[i]] for i in rows],
        "predicted_label": [labels[predictions[i]] for i in rows],
        "probability": probs[rows, predictions[rows]].round(4),
        "true_label_probability": probs[rows, scored.targets[rows]].round(4),
    })


def render_html(metrics: dict, classifier: Classifier, figure_names: list[str], wrong: pd.DataFrame, text_report: str) -> str:
    """Render one page with the summary and per-class tables, the figures, the wrong rows and the configuration."""
    esc = html.escape
    summary = [("data", metrics.get("data", "")), ("rows", metrics["rows"]), ("accuracy", f"{metrics['accuracy']:.4f}"),
               ("macro-F1", f"{metrics['macro_f1']:.4f}")]
    if metrics.get("roc_auc") is not None:
        summary.append(("ROC-AUC", f"{metrics['roc_auc']:.4f}"))
    cal = metrics["calibration"]
    summary += [
        ("temperature", f"{cal['temperature']:.4f}"),
        ("ECE before / after calibration", f"{cal['ece_uncalibrated']:.4f} / {cal['ece']:.4f}"),
        ("log loss before / after calibration", f"{cal['log_loss_uncalibrated']:.4f} / {cal['log_loss']:.4f}"),
        ("decision rule", _describe_decision(metrics["decision"])),
    ]
    parts = [
        "<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>gptclf evaluation report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;} table{border-collapse:collapse;margin:1em 0;}"
        " td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;} img{max-width:100%;border:1px solid #eee;}"
        " pre{background:#f6f6f6;padding:1em;overflow-x:auto;}</style></head><body>",
        f"<h1>Evaluation of {esc(str(classifier.path or 'classifier'))}</h1>",
        "<h2>Metrics</h2>", _table(["metric", "value"], summary),
        "<h2>Per class</h2>",
        _table(["class", "precision", "recall", "F1", "support"],
               [(n, f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", r["support"]) for n, r in metrics["per_class"].items()]),
        "<h2>Figures</h2>",
    ]
    for name in figure_names:
        parts.append(f"<figure><img src='{esc(name)}' alt='{esc(name)}'><figcaption>{esc(REPORT_FIGURES.get(name, name))}</figcaption></figure>")
    parts += [
        f"<h2>Most confidently wrong ({min(len(wrong), HTML_WRONG_ROWS)} of {len(wrong)} shown, all in misclassified.csv)</h2>",
        wrong.head(HTML_WRONG_ROWS).to_html(index=False, escape=True) if len(wrong) else "<p>No wrong predictions.</p>",
        "<h2>Classification report</h2>", f"<pre>{esc(text_report)}</pre>",
        "<h2>Model configuration (gptclf.json)</h2>", f"<pre>{esc(classifier.meta.to_json())}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _describe_decision(decision: dict) -> str:
    if decision["rule"] == "threshold":
        return f"positive when its probability >= {decision['threshold']:.4f} ({decision['source']})"
    return "most probable label"


def _table(header: list[str], rows: list[tuple]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_training_figures(folder: str | Path) -> list[Path]:
    """Draw the loss and validation-metric curves from ``train_log.jsonl`` into the classifier folder."""
    folder = Path(folder)
    steps, evaluations = read_train_log(folder / TRAIN_LOG_FILE)
    written = []
    if steps:
        written.append(figures.plot_training_loss(steps, folder / "training_loss.png"))
    if evaluations:
        written.append(figures.plot_validation_metrics(evaluations, folder / "validation_metrics.png"))
    return written
