"""SLURM helpers: one owner of requeueing (Lightning) and the checkpoint a requeued job resumes from.

Who requeues (see docs/cluster.md): SLURM sends ``--signal=USR1@<s>`` to every task of the job
step (every rank, not the batch shell). Lightning's ``SLURMEnvironment(auto_requeue=True)``
handles it: each rank saves ``<run dir>/hpc_ckpt_<n>.ckpt`` and rank 0 runs ``scontrol requeue``.
submitit's own handler listens on ``SUBMITIT_PREEMPT_SIGNAL`` (USR2 by default), which SLURM never
sends here, and hydra-submitit-launcher's ``max_num_timeout: 0`` stops it resubmitting timed-out
jobs, so submitit stays inert. Lightning installs its handler only if the signal has none yet
(``pytorch_lightning/trainer/connectors/signal_connector.py``), so a clash would silently leave
no owner at all: :func:`check_single_requeue_owner` refuses it instead.

References: Lightning ``lightning_fabric/plugins/environments/slurm.py``; submitit
``core/job_environment.py`` (``SignalHandler``) and ``slurm/slurm.py`` (``_make_sbatch_string``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue
from pytorch_lightning.callbacks import Callback

DEFAULT_REQUEUE_SIGNAL = "USR1"
SIGNAL_ENV = "VLDM_REQUEUE_SIGNAL"          # for plain sbatch scripts whose --signal is not USR1
SUBMITIT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"
SUBMITIT_DEFAULT_SIGNAL = "USR2"
_INTERACTIVE_JOB_NAMES = ("bash", "interactive")  # Lightning's rule for `srun --pty bash` sessions
_HPC_CKPT = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def in_slurm_job(environ: Mapping[str, str] | None = None) -> bool:
    """True inside tasks that ``srun`` started in a batch job (Lightning's ``SLURMEnvironment.detect``)."""
    env = _env(environ)
    return "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in _INTERACTIVE_JOB_NAMES


def restart_count(environ: Mapping[str, str] | None = None) -> int:
    """How many times SLURM has requeued this job (``SLURM_RESTART_COUNT``; 0 for a first start)."""
    return int(_env(environ).get("SLURM_RESTART_COUNT", "0") or 0)


def is_requeued(environ: Mapping[str, str] | None = None) -> bool:
    return restart_count(environ) > 0


def parse_signal(spec: str) -> signal.Signals:
    """``"USR1@90"``, ``"SIGUSR1"``, ``"usr1"`` or ``"10"`` -> ``signal.SIGUSR1``.

    ``"B:USR1@90"`` is refused: SLURM would signal only the batch shell, never the ranks.
    """
    text = str(spec).strip()
    if text.upper().startswith("B:"):
        raise ValueError(f"--signal={text} signals only the batch shell; the training ranks would never see it. "
                         "Drop the 'B:' prefix.")
    name = text.split("@", 1)[0].strip().upper()
    if name.isdigit():
        return signal.Signals(int(name))
    name = name if name.startswith("SIG") else f"SIG{name}"
    try:
        return signal.Signals[name]
    except KeyError:
        raise ValueError(f"unknown signal in {spec!r}") from None


def launcher_signal_spec() -> str | None:
    """The ``--signal`` value of the Hydra launcher config (``additional_parameters.signal``), if any."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    launcher = HydraConfig.get().get("launcher") or {}
    extra = launcher.get("additional_parameters") or {}
    value = extra.get("signal")
    return None if value is None else str(value)


def requeue_signal(environ: Mapping[str, str] | None = None) -> signal.Signals:
    """The signal SLURM sends before the time limit: Hydra launcher config, else $VLDM_REQUEUE_SIGNAL, else USR1."""
    spec = launcher_signal_spec() or _env(environ).get(SIGNAL_ENV) or DEFAULT_REQUEUE_SIGNAL
    return parse_signal(spec)


def check_single_requeue_owner(sig: signal.Signals, environ: Mapping[str, str] | None = None) -> None:
    """Refuse setups where Lightning would not own requeueing on ``sig``.

    Raises ``RuntimeError`` if submitit's preemption handler listens on the same signal, or if any
    handler is already installed for it (Lightning would then skip its own, without a word).
    """
    submitit_sig = parse_signal(_env(environ).get(SUBMITIT_SIGNAL_ENV, SUBMITIT_DEFAULT_SIGNAL))
    if submitit_sig == sig:
        raise RuntimeError(f"{SUBMITIT_SIGNAL_ENV}={submitit_sig.name} is also Lightning's requeue signal: two "
                           f"requeue owners. Leave {SUBMITIT_SIGNAL_ENV} at {SUBMITIT_DEFAULT_SIGNAL}.")
    current = signal.getsignal(sig)
    if current not in (None, signal.SIG_DFL):
        raise RuntimeError(f"{sig.name} already has a handler ({current!r}); Lightning would not install its "
                           "checkpoint-and-requeue handler. Remove the other handler or change the requeue signal.")


def slurm_environment_plugins(environ: Mapping[str, str] | None = None) -> list:
    """``[SLURMEnvironment(auto_requeue=True, requeue_signal=...)]`` inside a SLURM batch job, else ``[]``.

    Pass the result as the Trainer's ``plugins``. Outside SLURM (and in ``srun --pty bash``
    sessions) Lightning picks its environment itself.
    """
    if not in_slurm_job(environ):
        return []
    from lightning_fabric.plugins.environments import SLURMEnvironment

    sig = requeue_signal(environ)
    check_single_requeue_owner(sig, environ)
    return [SLURMEnvironment(auto_requeue=True, requeue_signal=sig)]


def hpc_checkpoints(run_dir: Path) -> list[Path]:
    """Lightning's requeue checkpoints (``<run dir>/hpc_ckpt_<n>.ckpt``), oldest version first."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("hpc_ckpt_*.ckpt") if (m := _HPC_CKPT.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a run directory resumes from: the newest of ``checkpoints/last.ckpt`` and the
    requeue checkpoints by write time (``st_mtime_ns``); at equal times the requeue checkpoint with
    the highest version, then ``last.ckpt``. None if there is none.

    A requeue checkpoint is written when the signal arrives, after the last periodic one, so a
    requeued job must prefer it (Lightning itself only does so when ``ckpt_path`` is None); a
    file system with coarse timestamps can give both the same time, hence the tie rule. Write time
    rather than the global step stored inside: a requeue checkpoint left behind by an earlier
    course of the run (a resume from another run's checkpoint prunes none) may hold a higher step
    than the ``last.ckpt`` training has since written, and reading the step loads every file.
    """
    run_dir = Path(run_dir)
    candidates = [p for p in [run_dir / "checkpoints" / "last.ckpt", *hpc_checkpoints(run_dir)] if p.is_file()]
    if not candidates:
        return None
    return max(enumerate(candidates), key=lambda ip: (ip[1].stat().st_mtime_ns, ip[0]))[1]


def prune_hpc_checkpoints(run_dir: Path, keep: Path | None) -> list[Path]:
    """Delete the requeue checkpoints other than ``keep``; returns the removed paths.

    Each requeue writes a full checkpoint; without pruning a long job fills the disk.
    """
    removed = []
    for path in hpc_checkpoints(run_dir):
        if keep is not None and path.resolve() == Path(keep).resolve():
            continue
        path.unlink(missing_ok=True)  # several ranks may prune at once
        removed.append(path)
    return removed


class PruneRequeueCheckpoints(Callback):
    """Once training resumes from a checkpoint of its own run dir (``last.ckpt`` or a requeue one),
    global rank 0 deletes the other ``hpc_ckpt_*.ckpt``; a resume from elsewhere prunes nothing.

    ``on_train_start`` runs after every rank has chosen and loaded its checkpoint (DDP's
    rendezvous lies in between), so no rank can still be looking at a file being removed.
    """

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001 - Lightning's hook signature
        if not (trainer.ckpt_path and trainer.is_global_zero):
            return
        run_dir, keep = Path(trainer.default_root_dir).resolve(), Path(trainer.ckpt_path).resolve()
        if keep.parent in (run_dir, run_dir / "checkpoints"):
            prune_hpc_checkpoints(run_dir, keep=keep)


# --------------------------------------------------------------------------- checks before submission
_URL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # s3://, pipe:, https://: read by the job, not checkable here


class SlurmPreflightError(RuntimeError):
    """A job that would fail at start: what it needs is missing (one line per problem)."""


def _raw(cfg: DictConfig, key: str) -> Any:
    """The value at ``key`` as written (interpolations unresolved)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return OmegaConf.to_container(node, resolve=False).get(leaf) if isinstance(node, DictConfig) else None


def _value(cfg: DictConfig, key: str, problems: list[str]) -> Any:
    """``cfg.<key>`` resolved; a value that is or leads to ``???`` adds a problem and gives None."""
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except (MissingMandatoryValue, InterpolationToMissingValueError):
        raw = _raw(cfg, key)
        source = re.fullmatch(r"\$\{([\w.]+)\}", str(raw))
        fix = f"{source.group(1)}=<value> (or {key}=<value>)" if source else f"{key}=<value>"
        shown = "" if raw == "???" else f" (it is {raw})"
        problems.append(f"{key} is not set{shown}: give {fix} on the command line")
        return None


def weight_keys(cfg: DictConfig) -> list[str]:
    """Keys of the job config that name weight files the job loads: ``stage.init_from`` and every
    ``weights`` / ``*_weights`` key under ``model``."""
    keys = ["stage.init_from"]

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                key = f"{prefix}.{k}"
                if isinstance(v, (dict, list)):
                    walk(v, key)
                elif str(k) == "weights" or str(k).endswith("_weights"):
                    keys.append(key)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{prefix}.{i}")

    walk(OmegaConf.to_container(cfg.model, resolve=False), "model")
    return keys


def _check_files(cfg: DictConfig, problems: list[str], notes: list[str], dependency: str | None = None) -> None:
    """Every weight file named by :func:`weight_keys` exists (each path reported once, with its keys);
    with a SLURM ``dependency``, ``stage.init_from`` may be one the job waited for still has to write."""
    by_path: dict[str, list[str]] = {}
    for key in weight_keys(cfg):
        value = _value(cfg, key, problems)
        if isinstance(value, str) and value:
            by_path.setdefault(value, []).append(key)
    for path, keys in by_path.items():
        named = " = ".join(sorted(keys, key=len))
        if _URL.match(path):
            notes.append(f"{named}: {path} (a URL: not checked here)")
        elif not Path(path).exists() and dependency and "stage.init_from" in keys:
            notes.append(f"{named}: {path} does not exist yet (the job waits for dependency={dependency})")
        elif not Path(path).is_file():
            problems.append(f"{named}: {path} does not exist" if not Path(path).exists()
                            else f"{named}: {path} is not a file")
        else:
            notes.append(f"{named}: {path}")
    resume = _value(cfg, "resume", problems)
    if resume not in (None, "auto", "never") and not Path(str(resume)).is_file():
        problems.append(f"resume: {resume} does not exist (auto, never or a checkpoint file)")


def _check_shards(cfg: DictConfig, problems: list[str], notes: list[str]) -> None:
    """``data.train_shards`` (required) and ``data.val_shards`` (when set) resolve to files."""
    from vldm.io.tar_shards import resolve_shards

    for key, required in (("data.train_shards", True), ("data.val_shards", False)):
        before = len(problems)
        spec = _value(cfg, key, problems)
        if spec is None:
            if required and len(problems) == before:
                problems.append(f"{key} is not set: give {key}=<shards>")
            continue
        spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else spec
        try:
            shards = resolve_shards(spec)
        except FileNotFoundError as err:
            problems.append(f"{key}={spec}: {str(err).split(';')[0]}")
            continue
        local = [s for s in shards if not _URL.match(s)]
        notes.append(f"{key}: {len(shards)} shard(s)" + (f", first {shards[0]}" if shards else "")
                     + ("" if len(local) == len(shards) else f" ({len(shards) - len(local)} URLs not checked)"))


def _writable_dir(path: Path) -> str | None:
    """None if ``path`` is, or can be made as, a writable directory; else why not."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return f"{path}: no existing parent directory"
        probe = probe.parent
    if not probe.is_dir():
        return f"{path}: {probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{path}: {probe} is not writable"
    return None


def _check_dirs(cfg: DictConfig, submitit_folder: str | None, problems: list[str], notes: list[str]) -> None:
    """The run directory and the submitit folder (up to its first ``%`` part) can be written."""
    dirs = [("paths.output_dir", _value(cfg, "paths.output_dir", problems))]
    if submitit_folder:
        parts = Path(submitit_folder).parts
        fixed = next((i for i, p in enumerate(parts) if "%" in p), len(parts))
        dirs.append(("hydra.launcher.submitit_folder", str(Path(*parts[:fixed]))))
    for key, value in dirs:
        if value is None:
            continue
        why = _writable_dir(Path(str(value)).expanduser().absolute())
        if why:
            problems.append(f"{key}: {why}")
        else:
            notes.append(f"{key}: {value} (writable)")


def _check_size(cfg: DictConfig, params: Mapping[str, Any], problems: list[str]) -> None:
    """One SLURM task per device: the launcher's nodes / tasks per node follow the trainer's."""
    nodes, devices = cfg.trainer.get("num_nodes", 1), cfg.trainer.get("devices", 1)
    if params.get("nodes") is not None and int(params["nodes"]) != int(nodes):
        problems.append(f"hydra.launcher.nodes={params['nodes']} but trainer.num_nodes={nodes}: set trainer.num_nodes "
                        f"only (the launcher follows it)")
    if params.get("tasks_per_node") is not None and str(params["tasks_per_node"]) != str(devices):
        problems.append(f"hydra.launcher.tasks_per_node={params['tasks_per_node']} but trainer.devices={devices}: "
                        f"one task per device (set trainer.devices only)")


def preflight(cfg: DictConfig, launcher_params: Mapping[str, Any] | None = None) -> tuple[list[str], list[str]]:
    """``(problems, notes)`` for a composed training job and its ``hydra.launcher`` parameters: its
    shards resolve to files, its weight files (``stage.init_from``, ``model...weights``; an
    ``init_from`` may be missing under a SLURM ``dependency``) and ``resume`` file exist, its run
    directory and submitit folder can be written, and the launcher's size follows the trainer.
    ``problems`` empty: nothing the job needs at start is missing as seen from this machine."""
    params = dict(launcher_params or {})
    problems: list[str] = []
    notes: list[str] = []
    _check_shards(cfg, problems, notes)
    dependency = (params.get("additional_parameters") or {}).get("dependency")
    _check_files(cfg, problems, notes, str(dependency) if dependency else None)
    _check_dirs(cfg, params.get("submitit_folder"), problems, notes)
    if params:
        _check_size(cfg, params, problems)
    return problems, notes


# --------------------------------------------------------------------------- the job script, and the launchers
def _script_executor(folder: str, max_num_timeout: int, python: str | None) -> Any:
    """submitit's SlurmExecutor for writing the job script only: it needs no ``srun`` on this machine."""
    from submitit.slurm.slurm import SlurmExecutor

    class ScriptOnly(SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:
            return 2

    return ScriptOnly(folder, max_num_timeout=max_num_timeout, python=python)


def render_sbatch(launcher_params: Mapping[str, Any], num_jobs: int = 1, python: str | None = None) -> str:
    """The sbatch script hydra-submitit-launcher submits for these ``hydra.launcher`` parameters and
    ``num_jobs`` jobs (more than one: a job array), as submitit writes it, without SLURM here."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from submitit.auto.auto import AutoExecutor

    params = {k: v for k, v in launcher_params.items() if v is not None and k != "_target_"}
    executor = _script_executor(str(params.pop("submitit_folder")), int(params.pop("max_num_timeout", 0)), python)
    base, generic = set(OmegaConf.structured(BaseQueueConf).keys()), set(AutoExecutor._typed_parameters())
    unknown = sorted(k for k in params if k not in base and k in generic)
    if unknown:
        raise ValueError(f"launcher parameters {unknown} are not SLURM parameters")
    converted = executor._convert_parameters({k: v for k, v in params.items() if k in generic})
    executor.update_parameters(**converted, **{k: v for k, v in params.items() if k not in generic})
    if num_jobs > 1:
        executor.parameters["map_count"] = num_jobs
    return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")


def check_jobs(launcher: Any, job_overrides: Sequence[Sequence[str]], dry_run: bool = False,
               say: Callable[[str], None] = print) -> None:
    """Run :func:`preflight` on every job of a hydra-submitit-launcher sweep (``launcher``: the set-up
    launcher plugin) and print each job's checks; raise :class:`SlurmPreflightError` listing every
    job's problems."""
    failed = []
    for i, overrides in enumerate(job_overrides):
        cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        problems, notes = preflight(cfg, launcher.params)
        choices = cfg.hydra.runtime.choices
        say(f"[vldm] slurm job {i}: {' '.join(overrides) or '(no overrides)'}")
        say(f"  experiment {choices.get('experiment')}, stage {cfg.stage.name}, model {choices.get('model')}, "
            f"data {choices.get('data')}, {cfg.trainer.get('num_nodes', 1)} node(s) x "
            f"{cfg.trainer.get('devices', 1)} device(s)")
        if str(choices.get("model", "")).startswith("toy"):
            notes.append(f"model {choices.get('model')} is a toy preset (a real run takes an experiment, e.g. "
                         f"experiment=svd_video_pretrain)")
        say("\n".join([*(f"  ok       {line}" for line in notes), *(f"  MISSING  {line}" for line in problems)]))
        failed += [f"job {i}: {line}" for line in problems]
    if failed:
        head = "dry run" if dry_run else "nothing submitted"
        raise SlurmPreflightError(f"{head}: {len(failed)} problem(s) the job would fail on at start:\n  - "
                                  + "\n  - ".join(failed))


def dry_run_launch(launcher: Any, job_overrides: Sequence[Sequence[str]],
                   say: Callable[[str], None] = print) -> list[JobReturn]:
    """The dry run (``hydra/launcher=slurm_dry_run``): print the sbatch script the slurm launcher would
    submit, check every job (:func:`check_jobs`), submit nothing."""
    script = render_sbatch(launcher.params, num_jobs=len(job_overrides))
    say(f"[vldm] slurm dry run: the job script for {len(job_overrides)} job(s)\n{script}")
    check_jobs(launcher, job_overrides, dry_run=True, say=say)
    say("[vldm] slurm dry run: every check passed; nothing submitted. Submit with hydra/launcher=slurm and the "
        "same arguments.")
    return [JobReturn(overrides=list(o), status=JobStatus.COMPLETED, _return_value=script) for o in job_overrides]


def _submit(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
    """Submit the sweep as hydra-submitit-launcher's ``launch`` does (the pickled callable is its own
    ``SlurmLauncher``), without waiting; returns submitit's jobs."""
    import submitit
    from hydra.core.singleton import Singleton
    from hydra.core.utils import filter_overrides
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    plain = SlurmLauncher(**launcher.params)
    plain.setup(hydra_context=launcher.hydra_context, task_function=launcher.task_function, config=launcher.config)
    params = dict(plain.params)
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    sweep_dir = Path(str(plain.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if "mode" in plain.config.hydra.sweep:
        os.chmod(sweep_dir, mode=int(str(plain.config.hydra.sweep.mode), 8))
    job_params = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        print(f"[vldm] slurm: #{idx}: {' '.join(filter_overrides(overrides))}", flush=True)
        job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
    return executor.map_array(plain, *zip(*job_params))


def job_state_visible(job_id: str) -> str | None:
    """None if ``sacct`` reports on ``job_id`` here (so submitit can follow the job), else why not."""
    import shutil

    if shutil.which("sacct") is None:
        return "sacct is not on PATH"
    try:
        done = subprocess.run(["sacct", "-j", str(job_id), "-n", "-o", "State"], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"sacct failed ({err})"
    return None if done.returncode == 0 else f"sacct failed: {(done.stderr or done.stdout).strip()[:200]}"


def checked_launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
    """Check every job (:func:`check_jobs`), submit them as hydra-submitit-launcher does, and wait for
    their results as it does, unless SLURM accounting cannot report on them from here (then submitit
    would poll ``sacct`` forever): return at once, naming the jobs and their logs."""
    check_jobs(launcher, job_overrides)
    jobs = _submit(launcher, job_overrides, initial_job_idx)
    why = job_state_visible(jobs[0].job_id)
    if why is None:
        return [job.results()[0] for job in jobs]
    ids = ", ".join(str(job.job_id) for job in jobs)
    print(f"[vldm] slurm: submitted job(s) {ids}; not waiting for them: {why}, so their state cannot be followed "
          f"from here. Watch them with squeue and the logs in {jobs[0].paths.folder}", flush=True)
    return [JobReturn(overrides=list(o), status=JobStatus.COMPLETED, _return_value=str(job.job_id))
            for o, job in zip(job_overrides, jobs)]
