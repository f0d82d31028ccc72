"""What runs inside a launched job: one infoview command, in every task.

submitit pickles a :class:`CommandJob` with the command and its arguments
(``--config <the frozen effective config>``) and calls it in each task. With
more than one task, torch.distributed's variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) are set from submitit's job
environment first, so the command's own set-up (``infoview.pretrain.distributed``)
builds the process group: NCCL on GPUs, gloo on CPUs.

Pre-emption and time-out: SLURM signals the job (``--signal=USR2@<delay>``);
submitit calls :meth:`CommandJob.checkpoint` in task 0, which asks the running
trainer to save (between two steps: the loop defers the signal while a step
runs) and returns the same job with ``train.resume=auto``, which submitit
requeues. A job requeued by SLURM itself (``scontrol requeue``, a node
failure) starts again from its pickle and resumes from ``checkpoints/last.pt``
the same way, losing only the steps after the last save.
"""
from __future__ import annotations

import submitit


class CommandJob(submitit.helpers.Checkpointable):
    """``CommandJob()(command, args)`` runs ``infoview <command> <args>`` in this task."""

    def __call__(self, command: str, args: list[str]):
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        from infoview.cli import build_config

        module, cfg = build_config(command, args)
        return module.run(cfg)

    def checkpoint(self, command: str, args: list[str]) -> submitit.helpers.DelayedSubmission:
        from infoview.pretrain.engine import current_trainer

        trainer = current_trainer()
        if trainer is not None:
            path = trainer.save_now()
            print(f"infoview launch: pre-empted or out of time at step {trainer.step}; saved {path}", flush=True)
        return submitit.helpers.DelayedSubmission(self, command, resumable(command, args))


def resumable(command: str, args: list[str]) -> list[str]:
    """The arguments of a job that continues where its previous run stopped."""
    if command == "pretrain":
        return [*[a for a in args if not a.startswith("train.resume=")], "train.resume=auto"]
    return list(args)
