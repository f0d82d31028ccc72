"""The fit loop's components (training/components.py): what they are handed and when; the worked example of
docs/architecture.md ("The training loop") runs as written."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from infoview.training.components import Component
from infoview.training.fit_state import FitCheckpoint
from infoview.training.loop import Saves, fit

REPO = Path(__file__).resolve().parents[2]


def test_the_worked_example_of_docs_architecture_runs_as_written(tmp_path):
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8").split("## The training loop", 1)[1]
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    steps, best = done.stdout.split(" ", 1)
    losses = [float(v) for v in best.strip(" []\n").split(",")]
    assert int(steps) == 12 and len(losses) == 3 and losses[2] < losses[0]  # it trains, epoch after epoch
    assert not (tmp_path / "runs" / "loop_example").exists()  # removed once the result was in hand


def test_a_component_is_handed_each_step_each_epochs_end_and_the_end_and_the_run_saves_around_its_work(tmp_path):
    events = []

    class Recorder(Component):
        def step_end(self, end):
            events.append(("step", end.step, end.last))

        def wants_epoch_end(self, at, final):
            return True

        def epoch_end(self, at, final):
            saved = torch.load(tmp_path / "last.pt", weights_only=True)["step"]
            events.append(("epoch_end", at.step, final, saved))

        def run_end(self, end):
            events.append(("run_end", end.step))

        def close(self):
            events.append(("close",))

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(2)]
    checkpoint = FitCheckpoint(tmp_path, settings={}).track({"model": model})
    fit(lambda b: F.cross_entropy(model(b[0]), b[1]), opt, data, steps=5, steps_per_epoch=2, checkpoint=checkpoint,
        saves=Saves(every_epochs=10), components=[Recorder()])
    assert events == [  # the run is saved before a component's work at an epoch's end, whatever Saves says
        ("step", 1, False), ("step", 2, False), ("epoch_end", 2, False, 2),
        ("step", 3, False), ("step", 4, False), ("epoch_end", 4, False, 4),
        ("step", 5, True), ("run_end", 5), ("epoch_end", 5, True, 5), ("close",),
    ]
