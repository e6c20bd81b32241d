"""vldm's SLURM launchers for Hydra (``configs/hydra/launcher/slurm.yaml``, ``slurm_dry_run.yaml``).

Hydra takes launcher plugins only from the ``hydra_plugins`` namespace; the checks and the job
script are :mod:`vldm.training.cluster`'s. ``CheckedSlurmLauncher`` checks every job, then submits
through hydra-submitit-launcher's own ``SlurmLauncher`` (the pickled job names nothing of this
package); ``SlurmDryRunLauncher`` checks and prints the job script, and submits nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


class CheckedSlurmLauncher(SlurmLauncher):
    """``SlurmLauncher`` that submits no job of the sweep if any would fail at start."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from vldm.training.cluster import checked_launch

        return checked_launch(self, job_overrides, initial_job_idx)


class SlurmDryRunLauncher(SlurmLauncher):
    """The slurm launcher's checks and job script, without submitting."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from vldm.training.cluster import dry_run_launch

        return dry_run_launch(self, job_overrides)
