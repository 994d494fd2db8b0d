"""Command line: each subcommand parses its flags and calls one typed function."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
import warnings
from typing import Any, Sequence

from . import __version__
from .config import DTYPE_CHOICES, DataConfig, ModelConfig, OptimConfig, ServeConfig, TrainConfig, flag
from .errors import ConfigError, GptclfError

log = logging.getLogger("gptclf")

TRAIN_GROUPS = (("data", DataConfig), ("model", ModelConfig), ("optimisation", OptimConfig), ("output", TrainConfig))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "predict" and not any(value.startswith("-") for value in extra):
        # argparse stops filling the TEXT list at the first option, so texts given after an
        # option (`predict DIR --dtype fp32 "text"`) arrive here. They are texts all the same.
        args.texts = [*args.texts, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _setup_logging(args.verbose)
    try:
        return args.run(args)
    except ConfigError as err:
        print(f"gptclf {args.command}: {err}", file=sys.stderr)
        return 2
    except GptclfError as err:
        print(f"gptclf {args.command}: error: {err}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptclf", description="Fine-tune a GPT-style decoder as a text classifier with LoRA.")
    parser.add_argument("--version", action="version", version=f"gptclf {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log debug messages.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="Train a classifier on a labelled file.", description="Train a classifier on a labelled file.")
    for title, cls in TRAIN_GROUPS:
        group = train.add_argument_group(title)
        for f in _settings(cls):
            _add_setting(group, f)
    train.set_defaults(run=run_train)

    evaluate = commands.add_parser("evaluate", help="Report metrics of a classifier on a labelled file.")
    _add_classifier_argument(evaluate)
    evaluate.add_argument("--data", required=True, help="Labelled CSV, TSV, JSONL or Parquet file.")
    evaluate.add_argument("--json-out", help="Also write the metrics as JSON to this file.")
    evaluate.add_argument("--report", metavar="OUTDIR", help="Write metrics.json, figures, report.html and misclassified.csv to this folder.")
    _add_threshold_option(evaluate)
    _add_scoring_options(evaluate, labelled=True)
    evaluate.set_defaults(run=run_evaluate)

    tune = commands.add_parser(
        "tune-threshold", help="Choose and store the decision threshold of a binary classifier.",
        description="Choose the threshold on the calibrated probability of the second label that maximises "
        "--metric on labelled data, and store it in the classifier; predict and evaluate then use it.",
    )
    _add_classifier_argument(tune)
    tune.add_argument("--data", required=True, help="Labelled held-out file (CSV, TSV, JSONL or Parquet), for example the validation file.")
    tune.add_argument("--metric", default="f1", help="f1 (default), precision@R (best precision with recall >= R) or recall@P (best recall with precision >= P); R and P are fractions such as 0.9.")
    tune.add_argument("--dry-run", action="store_true", help="Print the chosen threshold without storing it.")
    _add_scoring_options(tune, labelled=True)
    tune.set_defaults(run=run_tune_threshold)

    calibrate = commands.add_parser(
        "calibrate", help="Fit and store the temperature of a classifier on labelled data.",
        description="Fit the temperature that minimises the log loss on labelled held-out data and store it in "
        "the classifier. Training does this on --validation unless --no-calibrate is given.",
    )
    _add_classifier_argument(calibrate)
    calibrate.add_argument("--data", required=True, help="Labelled held-out file (CSV, TSV, JSONL or Parquet), for example the validation file.")
    _add_scoring_options(calibrate, labelled=True)
    calibrate.set_defaults(run=run_calibrate)

    predict = commands.add_parser("predict", help="Predict labels for texts or for a file.")
    _add_classifier_argument(predict)
    predict.add_argument("texts", nargs="*", metavar="TEXT", help="Texts to classify.")
    predict.add_argument("--input", help="File of texts (CSV, TSV, JSONL or Parquet).")
    predict.add_argument("--output", help="Write predictions here (.csv or .jsonl); needs --input.")
    predict.add_argument(
        "--chunk-size", type=int, default=8192, help="Rows read, scored and written at a time with --input (default 8192)."
    )
    _add_threshold_option(predict)
    _add_scoring_options(predict)
    predict.set_defaults(run=run_predict)

    export = commands.add_parser(
        "export", help="Write a standalone classifier folder with the LoRA weights merged into the base model."
    )
    export.add_argument("classifier", help="Classifier folder written by `gptclf train`.")
    export.add_argument("--output", required=True, help="Folder to write the standalone classifier to.")
    export.add_argument("--base-model", help="Load the base model from here instead of the recorded location.")
    export.add_argument("--overwrite", action="store_true", help="Replace an existing folder at --output.")
    export.set_defaults(run=run_export)

    serve = commands.add_parser("serve", help="Serve a classifier over HTTP (needs the `serve` extra: FastAPI and uvicorn).")
    _add_classifier_argument(serve)
    for f in dataclasses.fields(ServeConfig):
        _add_typed_setting(serve, f)
    serve.add_argument("--base-model", help="Load the base model from here instead of the recorded location.")
    serve.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="Autocast dtype for scoring (default auto).")
    serve.set_defaults(run=run_serve)

    check = commands.add_parser(
        "check",
        help="Audit a saved classifier for silent failures; exits 1 on any FAIL.",
        description="Audit a saved classifier: padding invariance, reload equality, trained parts, base model "
        "identity, tokenizer and labels, determinism and, with --data, truncation, class distribution and accuracy. "
        "Prints one row per check and exits 1 when any check fails.",
    )
    _add_classifier_argument(check)
    check.add_argument("--data", help="CSV, TSV, JSONL or Parquet file; adds the data rows, and labels (when present) add accuracy.")
    check.add_argument("--json-out", help="Also write the report as JSON to this file.")
    check.add_argument("--probe-rows", type=int, default=32, help="Texts from --data added to the padding probes (default 32).")
    _add_scoring_options(check)
    check.add_argument("--label-column", help="Column with the label; `label` when present and this is unset.")
    check.set_defaults(run=run_check)
    return parser


def _add_typed_setting(parser: argparse.ArgumentParser, f: dataclasses.Field) -> None:
    """Add a flag for a settings field whose values argparse converts itself."""
    if f.type in (bool, "bool"):
        parser.add_argument(flag(f.name), dest=f.name, action="store_true", help=f.metadata["help"])
        return
    convert = {"int": int, "float": float}.get(str(f.type), str)
    parser.add_argument(flag(f.name), dest=f.name, type=convert, default=f.default, help=f"{f.metadata['help']} (default: {f.default})")


def _settings(cls) -> list[dataclasses.Field]:
    """Fields of a settings class that are flags (TrainConfig's group fields are not)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def _add_threshold_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threshold", type=float,
        help="Binary classifiers: predict the second label when its calibrated probability is >= this "
        "(default: the threshold stored by tune-threshold, else the most probable label).",
    )


def _check_threshold_option(args: argparse.Namespace) -> None:
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ConfigError([f"--threshold must be a probability in [0, 1], got {args.threshold}"])


def _check_binary(classifier, args: argparse.Namespace) -> None:
    if args.threshold is not None and len(classifier.labels) != 2:
        raise ConfigError([f"--threshold applies to binary classifiers only; {args.classifier} has {len(classifier.labels)} labels"])


def _add_classifier_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("classifier", help="Classifier folder written by `gptclf train` or `gptclf export`.")


def _add_scoring_options(parser: argparse.ArgumentParser, labelled: bool = False) -> None:
    parser.add_argument("--text-column", help="Column with the text; detected from `text` or `sentence` when unset.")
    parser.add_argument("--batch-size", type=int, default=64, help="Texts per forward pass (default 64).")
    parser.add_argument("--base-model", help="Load the base model from here instead of the recorded location.")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="Autocast dtype for scoring (default auto).")
    if labelled:
        parser.add_argument("--label-column", help="Column with the label; `label` when unset.")


def _add_setting(group, f: dataclasses.Field) -> None:
    help_text = f.metadata.get("help", "")
    if f.type in (bool, "bool"):
        # A setting that is on by default gets a --no-NAME flag; None means the flag was not given.
        name = flag(f.name) if not f.default else "--no-" + flag(f.name)[2:]
        if f.default:
            help_text += " On by default; this flag turns it off."
        group.add_argument(name, dest=f.name, action="store_const", const=not f.default, default=None, help=help_text)
        return
    default = f.default if f.default is not dataclasses.MISSING else None
    shown = f" (default: {default})" if default is not None else ""
    # Values are parsed as text and converted later, so every bad flag is reported at once.
    choices = f.metadata.get("choices")
    metavar = "{" + ",".join(choices) + "}" if choices else f.name.upper()
    group.add_argument(flag(f.name), dest=f.name, default=None, metavar=metavar, help=help_text + shown)


def _convert(name: str, value: str, kind: Any) -> Any:
    base = [t for t in typing.get_args(kind) if t is not type(None)] or [kind]
    target = base[0]
    if target is list or typing.get_origin(target) is list:
        items = [v.strip() for v in value.split(",") if v.strip()]
        return items
    if target is int:
        return int(value)
    if target is float:
        return float(value)
    return value


def train_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Convert the flags given into typed keyword options, reporting every unconvertible value at once."""
    options: dict[str, Any] = {}
    problems = []
    for _, cls in TRAIN_GROUPS:
        hints = typing.get_type_hints(cls)
        for f in _settings(cls):
            value = getattr(args, f.name)
            if value is None:
                continue
            try:
                options[f.name] = value if isinstance(value, bool) else _convert(f.name, value, hints[f.name])
            except ValueError:
                problems.append(f"{flag(f.name)}: {value!r} is not a valid {_type_name(hints[f.name])}")
    if problems:
        raise ConfigError(problems)
    return options


def _type_name(kind: Any) -> str:
    base = [t for t in typing.get_args(kind) if t is not type(None)] or [kind]
    return {int: "integer", float: "number"}.get(base[0], "value")


def run_train(args: argparse.Namespace) -> int:
    from .training import train

    result = train(**train_options_from_args(args))
    if result.best_metrics:
        print(f"best validation accuracy {result.best_metrics['accuracy']:.4f}; classifier saved to {result.output}")
        if result.calibration:
            cal = result.calibration
            print(f"temperature {cal['temperature']:.4f}: validation ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}, "
                  f"log loss {cal['log_loss_before']:.4f} -> {cal['log_loss_after']:.4f}")
    else:
        print(f"classifier saved to {result.output}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import format_metrics, score_labelled_file, scored_metrics, write_json
    from .inference import Classifier

    _check_threshold_option(args)
    classifier = Classifier.load(args.classifier, base_model=args.base_model, dtype=args.dtype)
    _check_binary(classifier, args)
    scored = score_labelled_file(classifier, args.data, args.text_column, args.label_column, args.batch_size)
    metrics = scored_metrics(classifier, scored, args.threshold)
    print(format_metrics(metrics))
    if args.json_out:
        write_json(metrics, args.json_out)
        log.info("metrics written to %s", args.json_out)
    if args.report:
        from .reporting import write_evaluation_report

        page = write_evaluation_report(args.report, classifier, scored, metrics)
        print(f"report written to {page}")
    return 0


def run_tune_threshold(args: argparse.Namespace) -> int:
    from .calibration import parse_threshold_metric
    from .evaluation import tune_threshold_file
    from .inference import Classifier

    try:
        parse_threshold_metric(args.metric)
    except ValueError as err:
        raise ConfigError([str(err)]) from None
    classifier = Classifier.load(args.classifier, base_model=args.base_model, dtype=args.dtype)
    if len(classifier.labels) != 2:
        raise ConfigError([f"tune-threshold needs a binary classifier; {args.classifier} has {len(classifier.labels)} labels"])
    tuning = tune_threshold_file(
        classifier, args.data, args.metric, args.text_column, args.label_column, args.batch_size, save=not args.dry_run
    )
    print(
        f"threshold {tuning['threshold']:.4f} on P({tuning['positive_label']}) maximises {tuning['metric']} on {tuning['rows']} rows: "
        f"{tuning['metric'].split('@')[0]} {tuning['value']:.4f} (precision {tuning['precision']:.4f}, recall {tuning['recall']:.4f}, "
        f"F1 {tuning['f1']:.4f})"
    )
    if not tuning["feasible"]:
        print(f"no threshold reaches {tuning['metric']}; this one comes closest")
    print("not stored (--dry-run)" if args.dry_run else f"stored in {args.classifier}")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from .evaluation import calibrate_file
    from .inference import Classifier

    classifier = Classifier.load(args.classifier, base_model=args.base_model, dtype=args.dtype)
    summary = calibrate_file(classifier, args.data, args.text_column, args.label_column, args.batch_size)
    print(
        f"temperature {summary['temperature']:.4f} fitted on {summary['rows']} rows: "
        f"ECE {summary['ece_before']:.4f} -> {summary['ece_after']:.4f}, "
        f"log loss {summary['log_loss_before']:.4f} -> {summary['log_loss_after']:.4f}; stored in {args.classifier}"
    )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from .inference import Classifier
    from .streaming import predict_file

    problems = []
    if args.texts and args.input:
        problems.append("give texts on the command line or --input FILE, not both")
    if not args.texts and not args.input:
        problems.append("give texts to classify or --input FILE")
    if args.output and not args.input:
        problems.append("--output needs --input; texts given on the command line are printed")
    if args.input and not args.output:
        problems.append("--input needs --output FILE (.csv or .jsonl)")
    if args.chunk_size < 1:
        problems.append(f"--chunk-size must be at least 1, got {args.chunk_size}")
    if problems:
        raise ConfigError(problems)
    _check_threshold_option(args)
    classifier = Classifier.load(args.classifier, base_model=args.base_model, dtype=args.dtype)
    _check_binary(classifier, args)
    if args.input:
        count = predict_file(
            classifier, args.input, args.output, args.text_column, args.batch_size, chunk_rows=args.chunk_size, threshold=args.threshold
        )
        print(f"wrote {count} predictions to {args.output}")
        return 0
    probs = classifier.predict_proba(args.texts, batch_size=args.batch_size)
    for text, row, best in zip(args.texts, probs, classifier.decide(probs, args.threshold)):
        record = {"text": text, "label": classifier.labels[best], "probabilities": {n: round(float(p), 4) for n, p in zip(classifier.labels, row)}}
        print(json.dumps(record, ensure_ascii=False))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .checkpoint import export_classifier

    output = Path(args.output)
    if output.resolve() == Path(args.classifier).resolve():
        raise ConfigError([f"--output {args.output!r} is the classifier folder itself; choose a new folder"])
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not args.overwrite:
        raise ConfigError([f"--output {args.output!r} already exists; choose a new folder or pass --overwrite to replace it"])
    export_classifier(args.classifier, output, base_model=args.base_model)
    print(f"standalone classifier written to {output}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    config = ServeConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)})
    config.validate()
    try:
        from .serving import serve
    except ImportError as err:
        raise ConfigError([f"`gptclf serve` needs FastAPI and uvicorn ({err}); install them with `pip install 'gptclf[serve]'`"]) from None
    serve(args.classifier, config, base_model=args.base_model, dtype=args.dtype)
    return 0


def run_check(args: argparse.Namespace) -> int:
    from .check import format_report, run_checks, write_report_json

    problems = []
    if args.probe_rows < 0:
        problems.append(f"--probe-rows must be 0 or more, got {args.probe_rows}")
    if args.batch_size < 1:
        problems.append(f"--batch-size must be at least 1, got {args.batch_size}")
    if problems:
        raise ConfigError(problems)
    report = run_checks(
        args.classifier, args.data, base_model=args.base_model, dtype=args.dtype, probe_rows=args.probe_rows,
        text_column=args.text_column, label_column=args.label_column, batch_size=args.batch_size,
    )
    print(format_report(report))
    if args.json_out:
        write_report_json(report, args.json_out)
        log.info("check report written to %s", args.json_out)
    return 1 if report.failed else 0


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not verbose:
        for noisy in ("transformers", "peft", "httpx", "huggingface_hub", "urllib3", "filelock"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.captureWarnings(True)
