"""metrics.csv across a resume, and the online evaluator's subset."""
from __future__ import annotations

import csv

import numpy as np
import torch

from infoview.data.sources import ArraySource
from infoview.pretrain.monitor import OnlineEval, metrics_log


def test_a_resumed_log_drops_the_rows_after_the_checkpoint(tmp_path):
    log = metrics_log(tmp_path, tensorboard=False)
    for step in range(1, 8):
        log.write({"step": step, "loss": 1.0 / step})
    log.close()
    log = metrics_log(tmp_path, start_step=4, tensorboard=False)  # killed at 7, resumed from the step-4 checkpoint
    log.write({"step": 5, "loss": 0.5})
    log.close()
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5]


def test_capped_online_eval_reads_a_fixed_random_subset_not_the_first_classes():
    images = np.zeros((100, 8, 8, 3), np.uint8)
    source = ArraySource("sorted", images, [0] * 50 + [1] * 50)  # a folder sorted by class
    ev = OnlineEval(source, "train", "test", size=8, batch_size=10, device="cpu", mean=(0.5,) * 3, std=(0.5,) * 3,
                    max_images=20)

    def first_labels():
        ev.train_loader.set_epoch(0)
        return torch.cat([y for _, y in ev.train_loader])[:20]

    labels = first_labels()
    assert set(labels.tolist()) == {0, 1} and torch.equal(labels, first_labels())
