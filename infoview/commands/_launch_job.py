"""What runs inside a launched job: one infoview command, in every task.

submitit pickles a :class:`CommandJob` with the command and its arguments
(``--config <the frozen effective config>``) and calls it in each task. With
more than one task, torch.distributed's variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) are set from submitit's job
environment first, so the command's own set-up (``infoview.training.distributed``)
builds the process group: NCCL on GPUs, gloo on CPUs.

Pre-emption and time-out: SLURM signals the job (``--signal=USR2@<delay>``);
submitit calls :meth:`CommandJob.checkpoint` in task 0. For a command that
declares how it resumes (``Command.resume``: pretrain's ``train.resume=auto``;
"" for linear, detect and segment, which go on from their folder's checkpoint
when run again as they were) it calls the command's ``save_on_preempt``
(``commands.save_fit_on_preempt``: the ``fit`` loop they all train on holds
the signal until the step in progress has ended, then saves) and returns the
same job with the resume key (none for the evaluators), which submitit
requeues. A job
requeued by SLURM itself (``scontrol requeue``, a node failure) starts again
from its pickle and resumes from ``checkpoints/last.pt`` the same way, losing
only the steps after the last save. A command that cannot resume is not
requeued: starting it over would only meet its own half-written folder.
"""
from __future__ import annotations

import sys

import submitit

from infoview.commands import build_config, spec


class CommandJob(submitit.helpers.Checkpointable):
    """``CommandJob()(command, args)`` runs ``infoview <command> <args>`` in this task."""

    def __call__(self, command: str, args: list[str]):
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        module, cfg = build_config(command, args)
        return module.run(cfg)

    def checkpoint(self, command: str, args: list[str]) -> submitit.helpers.DelayedSubmission | None:
        declared = spec(command)
        if declared.resume is None:
            print(f"infoview launch: pre-empted or out of time; '{command}' cannot resume, so the job is not "
                  "requeued (rerun it with a longer launch.timeout_min)", file=sys.stderr, flush=True)
            return None
        if declared.save_on_preempt is not None:
            said = declared.save_on_preempt()
            if said:
                print(f"infoview launch: {said}", flush=True)
        return submitit.helpers.DelayedSubmission(self, command, resumable(command, args))


def resumable(command: str, args: list[str]) -> list[str]:
    """The arguments of a job that continues where its previous run stopped (the command's ``resume`` key;
    the same arguments for a command whose ``resume`` is "")."""
    resume = spec(command).resume
    if not resume:
        return list(args)
    key = resume.split("=", 1)[0] + "="
    return [*[a for a in args if not a.startswith(key)], resume]
