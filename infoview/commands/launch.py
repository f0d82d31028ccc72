"""Run any infoview command as a SLURM job (or locally) through submitit.

`infoview launch <command> [--config FILE] [key=value ...] [launch.key=value ...]`

Keys that start with `launch.` configure the job; everything else belongs to
the command and is checked before anything is submitted (an unknown command or
key, a missing config file, an unknown partition are errors here, not in a
job log). The command's effective config is frozen to a YAML file in the job's
folder, so the job runs exactly what was checked.

What a job does follows what the command declares (infoview.commands.Command):
- a distributed command (pretrain, detect) runs one process per GPU:
  launch.tasks_per_node defaults to launch.gpus_per_node (or 1 without GPUs),
  and inside the job torch.distributed is set up from submitit's environment
  (NCCL on GPUs, gloo on CPUs);
- any other command runs as one process: launch.tasks_per_node defaults to 1,
  and more tasks, more nodes or more than one GPU are an error here, not eight
  copies writing into one folder;
- across nodes (launch.nodes), the ranks meet at the job's first node; the
  job's srun runs with --kill-on-bad-exit, so one rank that dies ends the
  others at once, and launch.wait names the rank that ended first (srun's
  report in the job's first log);
- pre-emption and time-out (SLURM's USR2, launch.signal_delay_s before the
  limit): a command that can resume (pretrain, distill, linear, detect,
  segment) saves a checkpoint and is requeued, resuming from
  checkpoints/last.pt, up to launch.max_requeues time-outs; one that cannot
  is not requeued (the job ends; rerun it with a longer launch.timeout_min).

launch.sweep: a list of override strings, one job each (a SLURM job array);
an entry that sets no out_dir runs in <out_dir>/sweep<i>.
launch.dry_run=true prints the sbatch script and submits nothing;
launch.wait=true waits for the jobs and prints their states as they change.

Launch values reach a shell script (the sbatch script's #SBATCH lines, its
setup block, its paths), and submitit quotes them but keeps an embedded
newline, after which the rest of the value is a command line of its own. So a
launch value that holds a control character is refused (script_value);
launch.setup lines are shell commands by design and run as written.

Example: infoview launch pretrain --config mocov2_infonce_imagenet launch.nodes=2 launch.gpus_per_node=8
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import ListConfig

from infoview import schema
from infoview.commands import Command, build_config, load_command, names, spec
from infoview.config import did_you_mean, parse_overrides, resolve, save_config
from infoview.errors import ConfigError, InfoviewError
from infoview.schema import Key

USAGE = "usage: infoview launch <command> [--config FILE] [key=value ...] [launch.key=value ...]"
COMMAND = Command(help="Run any command as a SLURM job (or locally) via submitit; requeues and resumes on pre-emption.",
                  usage=USAGE)
EXECUTORS = ("slurm", "local")
DEFAULTS: dict[str, Any] = {
    "launch": {
        "executor": Key("slurm", "slurm, or local to run here through submitit's local executor", choices=EXECUTORS),
        "nodes": Key(1, "nodes", min=1),
        "tasks_per_node": Key(0, "tasks per node; 0 = launch.gpus_per_node (distributed commands), or 1", min=0),
        "gpus_per_node": Key(0, "GPUs per node", min=0),
        "cpus_per_task": Key(0, "CPUs per task; 0 = the cluster's default", min=0),
        "mem_gb": Key(0, "memory per node in GB; 0 = the cluster's default", min=0),
        "partition": Key("", "SLURM partition; '' = the cluster's default"),
        "timeout_min": Key(60, "the job's time limit in minutes", min=1),
        "account": Key("", "SLURM account, passed to sbatch when set"),
        "qos": Key("", "SLURM quality of service, passed to sbatch when set"),
        "constraint": Key("", "SLURM node constraint, passed to sbatch when set"),
        "comment": Key("", "SLURM comment, passed to sbatch when set"),
        "job_name": Key("", "the job's name; '' = infoview-<command>"),
        "folder": Key("runs/launch", "where the frozen configs, submission files and logs go"),
        "signal_delay_s": Key(90, "SLURM sends USR2 this many seconds before the time limit", min=0),
        "max_requeues": Key(3, "time-outs of a resumable command that are requeued", min=0),
        "setup": Key([], "shell lines the job runs first (module load ...)"),
        "sweep": Key([], "override strings, one job each (a job array; see above)"),
        "dry_run": Key(False, "print the sbatch script, submit nothing"),
        "wait": Key(False, "wait for the jobs, printing their states as they change"),
        "poll_s": Key(2.0, "seconds between two looks at the jobs' states (launch.wait)", min=0),
    }
}
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
            "PREEMPTED", "FINISHED", "INTERRUPTED", "DONE"}


def split_args(args: Sequence[str]) -> tuple[str, list[str], list[str]]:
    """``[command, *rest]`` -> (command, the command's arguments, the launch.* overrides)."""
    if not args or args[0].startswith("-") or "=" in args[0]:
        raise InfoviewError("launch needs a command first: infoview launch <command> [--config FILE] [key=value ...]")
    command, rest = args[0], list(args[1:])
    if command == "launch":
        raise InfoviewError("launch cannot launch itself")
    launch = [a for a in rest if a.startswith("launch.")]
    return command, [a for a in rest if not a.startswith("launch.")], launch


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def script_value(key: str, value: Any) -> Any:
    """``value`` of ``launch.<key>`` (a string, or a list of them), refused if it holds a control character.

    Every launch value may reach the job's shell script; a newline there would end the quoted value and make
    the rest a line of the script.
    """
    items = value if isinstance(value, (list, tuple, ListConfig)) else [value]
    for item in items:
        found = _CONTROL.search(item) if isinstance(item, str) else None
        if found:
            raise ConfigError(f"launch.{key} holds a control character ({found.group()!r} in {item!r}): a launch "
                              "value reaches the job's shell script, where it could start a command of its own")
    return value


def launch_config(overrides: Sequence[str], command: str = "", declared: Command | None = None):
    """The ``launch.*`` keys, checked, and checked against what ``command`` declares (``declared``)."""
    cfg = resolve(schema.defaults(DEFAULTS), None, parse_overrides(overrides))
    schema.check(cfg, DEFAULTS)
    lc = cfg.launch  # its choices and bounds are checked above (DEFAULTS)
    for key, value in lc.items():
        script_value(key, value)
    if lc.executor == "local" and lc.nodes != 1:
        raise ConfigError("launch.executor=local runs on this machine: launch.nodes must be 1")
    if declared is not None and not declared.distributed:
        asked = {k: lc[k] for k in ("nodes", "tasks_per_node", "gpus_per_node") if lc[k] > 1}
        if asked:
            given = ", ".join(f"launch.{k}={v}" for k, v in asked.items())
            what = ("hold GPUs it does not use" if list(asked) == ["gpus_per_node"]
                    else "run it several times into one out_dir")
            distributed = ", ".join(n for n in names() if spec(n).distributed)
            raise ConfigError(f"'{command}' runs as one process on one device, so {given} would {what}; launch it "
                              "with launch.nodes=1, launch.tasks_per_node=1 and at most launch.gpus_per_node=1 "
                              f"(the distributed commands: {distributed})")
    return lc


def _job_args(command: str, args: list[str], entry: str, index: int, sweeping: bool) -> tuple[list[str], Any]:
    """Check one job's arguments and return them with its effective config."""
    extra = shlex.split(entry)
    module, cfg = build_config(command, [*args, *extra])
    if sweeping and not any(a.startswith("out_dir=") for a in extra) and "out_dir" in cfg:
        module, cfg = build_config(command, [*args, *extra, f"out_dir={Path(cfg.out_dir) / f'sweep{index}'}"])
    return [*args, *extra], cfg


def _check_partition(partition: str) -> None:
    if not shutil.which("sinfo"):
        raise InfoviewError("sinfo is not on PATH: is this a SLURM login node? (launch.executor=local runs here)")
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise InfoviewError(f"sinfo failed: {out.stderr.strip() or out.stdout.strip()}")
    names = sorted({p.strip().rstrip("*") for p in out.stdout.split()})
    if partition and partition not in names:
        raise InfoviewError(
            f"unknown partition '{partition}'" + did_you_mean(partition, names) + f" Partitions: {', '.join(names)}"
        )


def build_executor(lc, command: str, folder: Path, distributed: bool = True):
    import submitit

    tasks = lc.tasks_per_node or (max(lc.gpus_per_node, 1) if distributed else 1)
    params: dict[str, Any] = {"timeout_min": lc.timeout_min, "nodes": lc.nodes, "tasks_per_node": tasks,
                              "name": lc.job_name or f"infoview-{command}"}
    if lc.gpus_per_node:
        params["gpus_per_node"] = lc.gpus_per_node
    if lc.cpus_per_task:
        params["cpus_per_task"] = lc.cpus_per_task
    if lc.mem_gb:
        params["mem_gb"] = lc.mem_gb
    if lc.executor == "slurm":
        slurm = {"partition": lc.partition, "account": lc.account, "qos": lc.qos, "constraint": lc.constraint,
                 "comment": lc.comment}
        params.update({f"slurm_{k}": v for k, v in slurm.items() if v})
        params["slurm_signal_delay_s"] = lc.signal_delay_s
        if distributed:  # one dead rank ends the step at once, rather than leaving the others to their timeout
            params["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
        if lc.setup:
            params["slurm_setup"] = list(lc.setup)
    extra = {"slurm_max_num_timeout": lc.max_requeues} if lc.executor == "slurm" else {}
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=lc.executor, **extra)
    executor.update_parameters(**params)
    return executor


def sbatch_script(executor) -> str:
    """The script submitit hands to sbatch for this executor (what a dry run prints)."""
    inner = executor._executor  # submitit's SlurmExecutor
    return inner._make_submission_file_text(inner._submitit_command_str, "<job uid>")


def _scontrol_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=60)
    for field in out.stdout.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return "UNKNOWN"


# srun's line for each task that ended badly ("srun: error: node7: task 3: Killed", "tasks 0-1: Exited with
# exit code 1"), and slurmstepd's for a run that SLURM ended and started again (requeue, time limit, pre-emption)
_SRUN_TASK_ERROR = re.compile(r"^srun: error: (\S+): tasks? (\d+)[^:]*: (.+)$", re.M)
_RUN_RESTARTED = re.compile(r"^.*\*\*\* .* DUE TO (JOB REQUEUE|TIME LIMIT|PREEMPTION) \*\*\*.*$", re.M)


def first_failed_rank(stderr: Path) -> tuple[int, str, str] | None:
    """(rank, node, how it ended) of the first task that srun saw end badly in the job's last run, or None.

    The job's first log (``<id>_0_log.err``) is also the batch script's, where srun reports each task that
    died or failed (``--kill-on-bad-exit`` then ends the others, which it reports after it). A requeued job
    appends to it; the lines of its earlier runs end with slurmstepd's ``*** ... DUE TO JOB REQUEUE ***``.
    """
    try:
        text = stderr.read_text(errors="replace")
    except OSError:
        return None
    restarts = list(_RUN_RESTARTED.finditer(text))
    match = _SRUN_TASK_ERROR.search(text, restarts[-1].end() if restarts else 0)
    return (int(match.group(2)), match.group(1), match.group(3).strip()) if match else None


# the line a Python traceback ends with ("infoview.errors.InfoviewError: folder x does not exist"), also as torch's
# DDP prints it ("[rank3]: RuntimeError: ..."); the exception's name ends as Python's own do
_ERROR_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?((?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit|"
                         r"Interrupted)))(?::\s*(.*))?$")
#: infoview's own errors, whose message is said without their class (as the CLI says them)
_OWN_ERRORS = ("InfoviewError", "ConfigError", "Interrupted")


def last_error_line(text: str) -> str | None:
    """The last exception line of a task's log (or of a traceback): ``RuntimeError: ...``, or an infoview
    error's message alone; None when there is none."""
    for line in reversed(text.splitlines()):
        found = _ERROR_LINE.match(line.strip())
        if found:
            name, message = found.group(2), (found.group(3) or "").strip()
            if name in _OWN_ERRORS and message:
                return message
            return f"{name}: {message}" if message else name
    return None


def _log_error(path: Path, tail: int = 1 << 16, wait_s: float = 5.0) -> str | None:
    """:func:`last_error_line` of the last ``tail`` bytes of the log at ``path`` (None if it cannot be read).

    SLURM may report a job FAILED before the task's last lines have reached its log (slurmstepd forwards
    them; on a busy node that lags), so a log without an error line is read again for up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(max(f.seek(0, 2) - tail, 0))
                found = last_error_line(f.read().decode("utf-8", "replace"))
        except OSError:
            found = None
        if found is not None or time.monotonic() >= deadline:
            return found
        time.sleep(0.25)


def _failure(job, state: str, error: str | None) -> str | None:
    """What a failed job says: the rank that ended first (srun's report) with its own last error line and log."""
    failed = first_failed_rank(Path(job.paths.stderr)) if state != "COMPLETED" or error else None
    if failed is None:
        return error
    rank, node, how = failed
    own = error if rank == 0 and error else _log_error(_task_log(job, rank))
    said = f": {own}" if own else ""
    if getattr(job, "num_tasks", 2) == 1:
        return f"{own or how} (on node {node}); its log: {_task_log(job, rank)}"
    return (f"rank {rank} on node {node} ended first ({how}) and the other ranks stopped with it{said}; "
            f"its log: {_task_log(job, rank)}")


def _task_log(job, rank: int) -> Path:
    from submitit.core.utils import JobPaths

    return JobPaths(job.paths.folder, job.job_id, rank).stderr


def _outcome(job, executor_kind: str, state: str, grace_s: float = 10.0) -> tuple[Any, str | None]:
    """Task 0's result, or its error as submitit reports it (last line), once the job has ended.

    On SLURM only task 0 is asked. Of a job that did not complete, only once its result file is there (or
    after ``grace_s``, for a shared file system's delay): a task killed before it could write one has none,
    and submitit would wait for it by polling sacct, which a cluster without accounting lacks.
    """
    task = job
    if executor_kind == "slurm":
        task = job.task(0) if job.num_tasks > 1 else job
        deadline = time.time() + grace_s
        while state != "COMPLETED" and not task.paths.result_pickle.exists() and time.time() < deadline:
            time.sleep(0.5)
        if state != "COMPLETED" and not task.paths.result_pickle.exists():
            return None, "task 0 left no result (killed before it could report)"
    try:
        return task.results()[0], None  # task 0 reports
    except Exception as exc:  # the job's own error: the last error line of the trace submitit reports, or its log
        text = str(exc).strip()
        return None, (last_error_line(text) or _log_error(Path(task.paths.stderr))
                      or (text.splitlines()[0] if text else type(exc).__name__))


def wait_for(jobs, executor_kind: str, poll_s: float = 2.0, log=print) -> list[dict]:
    """Wait until every job ends, printing state changes; returns ``[{id, state, result}]``."""
    states = {j.job_id: "" for j in jobs}
    finished: dict[str, dict] = {}
    while len(finished) < len(jobs):
        for job in jobs:
            if job.job_id in finished:
                continue
            if executor_kind == "slurm":
                state = _scontrol_state(job.job_id)
                done = state in TERMINAL
            else:  # submitit's local states: RUNNING, FINISHED (with a result or an error), INTERRUPTED
                done = job.done()
                state = {"FINISHED": "COMPLETED"}.get(job.state, job.state) if done else "RUNNING"
            result = error = None
            if done:  # its outcome before its state is said: a job that failed is not first said COMPLETED
                result, error = _outcome(job, executor_kind, state)
                if error and state == "COMPLETED":
                    state = "FAILED"
                if executor_kind == "slurm":
                    error = _failure(job, state, error)
            if state != states[job.job_id]:
                log(f"job {job.job_id}: {state}")
                states[job.job_id] = state
            if done:
                finished[job.job_id] = {"id": job.job_id, "state": state, "result": result, "error": error}
        if len(finished) < len(jobs):
            time.sleep(poll_s)
    return [finished[j.job_id] for j in jobs]


def main(args: Sequence[str]) -> dict:
    command, cmd_args, launch_over = split_args(args)
    declared: Command = load_command(command).COMMAND  # an unknown command is an error that names the nearest
    lc = launch_config(launch_over, command, declared)
    entries = [str(e) for e in lc.sweep] or [""]
    jobs_args = [_job_args(command, cmd_args, e, i, len(entries) > 1) for i, e in enumerate(entries)]
    if declared.check_launch is not None:
        for _, cfg in jobs_args:  # what a requeued job needs is checked now, not in its log
            declared.check_launch(cfg)
    if lc.executor == "slurm" and not lc.dry_run:
        _check_partition(lc.partition)

    folder = Path(lc.folder).resolve()
    executor = build_executor(lc, command, folder, declared.distributed)
    if lc.dry_run:
        if lc.executor != "slurm":
            raise ConfigError("launch.dry_run prints an sbatch script: it needs launch.executor=slurm")
        if len(entries) > 1:
            executor.update_parameters(slurm_array_parallelism=len(entries))
        script = sbatch_script(executor)
        print(script, flush=True)
        return {"dry_run": True, "jobs": len(entries), "command": command}

    from infoview.commands._launch_job import CommandJob, resumable  # submitit, only when a job is submitted

    frozen = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i, (_, cfg) in enumerate(jobs_args):
        path = folder / "configs" / f"{command}-{stamp}-{i}.yaml"
        save_config(cfg, path)
        frozen.append(resumable(command, ["--config", str(path)]))
    if len(frozen) == 1:
        jobs = [executor.submit(CommandJob(), command, frozen[0])]
    else:
        with executor.batch():
            jobs = [executor.submit(CommandJob(), command, a) for a in frozen]
    report = []
    for job, (_, cfg) in zip(jobs, jobs_args):
        entry = {"id": job.job_id, "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}
        if "out_dir" in cfg:
            entry["out_dir"] = str(cfg.out_dir)
        report.append(entry)
        print(f"submitted {command} as job {job.job_id} ({lc.executor}); logs: {job.paths.stdout}", flush=True)
    result: dict[str, Any] = {"executor": lc.executor, "command": command, "jobs": report}
    if lc.wait:
        outcomes = wait_for(jobs, lc.executor, lc.poll_s, log=lambda m: print(m, file=sys.stderr, flush=True))
        for entry, outcome in zip(report, outcomes):
            entry.update({k: outcome[k] for k in ("state", "result", "error")})
        failed = [o for o in outcomes if o["error"] or o["state"] != "COMPLETED"]
        if failed:
            f = failed[0]
            raise InfoviewError(f"job {f['id']} ended {f['state']}: {f['error'] or 'see its log'}; "
                                f"logs in {folder}")
    return result
