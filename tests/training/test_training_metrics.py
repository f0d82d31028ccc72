"""The metrics log (infoview.training.metrics): what a full disk does to it."""
from __future__ import annotations

import errno
import os

import pytest

from infoview.errors import InfoviewError
from infoview.training.metrics import MetricsLog


class _FullFile:
    closed = False

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        pass


def test_a_full_disk_while_logging_is_one_line_naming_metrics_csv(tmp_path):
    log = MetricsLog(tmp_path, ("step", "loss"), tensorboard=False)
    log.write({"step": 1, "loss": 0.5})
    log._file.close()
    log._file = _FullFile()  # the disk is full from now on
    log._csv = __import__("csv").DictWriter(log._file, fieldnames=log.columns)
    with pytest.raises(InfoviewError, match=r"cannot write .*metrics.csv \(No space left on device\)$"):
        log.write({"step": 2, "loss": 0.4})
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["step,loss", "1,0.5"]
