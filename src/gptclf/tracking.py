"""Training scalars: one JSON line per optimizer step and per evaluation, optionally mirrored to TensorBoard.

Each line of ``train_log.jsonl`` is an object with ``kind`` either ``step`` (``step``, ``epoch``,
``loss``, ``lr``, ``samples_per_second``) or ``validation`` (``step``, ``epoch`` and the
validation metrics). ``loss`` is the step's mean loss over this process's rows (weighted when class weights are
set), unsmoothed. ``lr`` is read after
the step's scheduler update, as the progress bar shows it, so it is the rate of the next step.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from .checkpoint import TENSORBOARD_DIR, TRAIN_LOG_FILE

log = logging.getLogger(__name__)

REPORT_TO_CHOICES = ("tensorboard",)


def tensorboard_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is None


class TrainLogger:
    """Append training scalars to ``OUTPUT/train_log.jsonl`` and, with ``report_to="tensorboard"``, to TensorBoard.

    Creating one starts a fresh log, removing the log of an earlier run in the same folder, unless
    ``append`` (a resumed run) is set. With ``enabled=False`` (a non-main process) it writes nothing.
    """

    def __init__(self, folder: str | Path, report_to: str | None = None, append: bool = False, enabled: bool = True):
        self.folder = Path(folder)
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if not append:
            self.path.write_text("")
        if report_to == "tensorboard":
            self.writer = self._open_tensorboard(clear=not append)

    @property
    def path(self) -> Path:
        # Looked up per write because saving the classifier moves the log into a new folder.
        return self.folder / TRAIN_LOG_FILE

    def _open_tensorboard(self, clear: bool):
        from torch.utils.tensorboard import SummaryWriter

        logdir = self.folder / TENSORBOARD_DIR
        if clear:
            shutil.rmtree(logdir, ignore_errors=True)
        log.info("logging TensorBoard scalars to %s (view with: tensorboard --logdir %s)", logdir, logdir)
        return SummaryWriter(log_dir=str(logdir))

    def log_step(self, step: int, epoch: float, loss: float, lr: float, samples_per_second: float) -> None:
        """Record one optimizer step: its loss, learning rate and training throughput in rows/s."""
        record = {"kind": "step", "step": step, "epoch": round(epoch, 4), "loss": loss, "lr": lr,
                  "samples_per_second": round(samples_per_second, 2)}
        self._append(record)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
            self.writer.add_scalar("train/samples_per_second", samples_per_second, step)

    def log_evaluation(self, metrics: dict) -> None:
        """Record one validation pass; ``metrics`` has ``optimizer_step``, ``epoch`` and numeric metrics."""
        step = int(metrics["optimizer_step"])
        values = {k: v for k, v in metrics.items() if k != "optimizer_step" and isinstance(v, (int, float))}
        self._append({"kind": "validation", "step": step, **values})
        if self.writer is not None:
            for name, value in values.items():
                if name != "epoch":
                    self.writer.add_scalar(f"validation/{name}", value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _append(self, record: dict) -> None:
        if not self.enabled:
            return
        # Opened per record, because each save of the classifier puts the log into a new folder.
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def read_train_log(path: str | Path) -> tuple[list[dict], list[dict]]:
    """Split a ``train_log.jsonl`` into its step records and its validation records."""
    steps, evaluations = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        (evaluations if record.get("kind") == "validation" else steps).append(record)
    return steps, evaluations
