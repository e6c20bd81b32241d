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
from collections.abc import Mapping
from pathlib import Path

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
