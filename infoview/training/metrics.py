"""The metrics log every training loop writes: metrics.csv (fixed columns), TensorBoard, a plot."""
from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from infoview.utils.io import atomic_write_text, cannot_write, os_error_of


class MetricsLog:
    """``metrics.csv`` (one row per logged step, the columns given) and TensorBoard events.

    On resume, rows after ``start_step`` (written by the run that was killed
    after its last checkpoint) are dropped, and so are TensorBoard's events
    (``purge_step``), so every step appears once.
    """

    def __init__(self, out_dir: str | os.PathLike, columns: Sequence[str], start_step: int = 0,
                 tensorboard: bool = True, plot: Callable[[Path], object] | None = None):
        self.columns = tuple(columns)
        self.plot = plot
        self.path = Path(out_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if start_step > 0 and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= start_step]
        buf = io.StringIO()  # a new run starts the file afresh; a resumed one keeps its rows so far
        w = csv.DictWriter(buf, fieldnames=self.columns)
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in self.columns} for r in rows)
        atomic_write_text(self.path, buf.getvalue())
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._csv = csv.DictWriter(self._file, fieldnames=self.columns)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out_dir) / "tb"), purge_step=start_step if start_step > 0 else None)
            # one chart with the certified bound, its ceiling, and the training rows' (uncertified) value
            self.tb.add_custom_scalars({"MI (nats)": {
                "bound, ceiling, estimate": ["Multiline", ["train/mi", "train/mi_ceiling", "train/mi_estimate"]],
            }})

    def write(self, row: dict) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"metrics: unknown columns {sorted(unknown)}")
        try:
            self._csv.writerow({k: _fmt(row.get(k)) for k in self.columns})
            self._file.flush()
        except OSError as exc:  # a full disk: one line naming the file, not a traceback
            raise cannot_write(self.path, exc, kept=False) from None
        if self.tb is not None:
            step = int(row["step"])
            for key, value in row.items():
                if key in ("step",) or value is None:
                    continue
                tag = key.replace("online_", "online/", 1) if key.startswith("online_") else f"train/{key}"
                with _writing(self.path.parent / "tb"):
                    self.tb.add_scalar(tag, float(value), step)

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as exc:
            raise cannot_write(self.path, exc, kept=False) from None
        finally:
            if self.tb is not None:
                with _writing(self.path.parent / "tb"):
                    self.tb.close()

    def flush_plot(self) -> None:
        """Redraw the run's plot (``plot(out_dir)``, curves.png) from metrics.csv, when the log has one.

        A figure that cannot be drawn is a warning, not the end of the run
        (and never hides the error that ended one).
        """
        if self.plot is None:
            return
        if not self._file.closed:
            self._file.flush()
        try:
            self.plot(self.path.parent)
        except Exception as exc:  # noqa: BLE001 - a plot is not worth a run
            print(f"infoview: could not draw {self.path.parent / 'curves.png'}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)


@contextlib.contextmanager
def _writing(path: Path):
    """TensorBoard's writer over a full disk: one line naming its folder, not a traceback."""
    try:
        yield
    except Exception as exc:
        error = os_error_of(exc)
        if error is None:
            raise
        raise cannot_write(path, error, kept=False) from None


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
