"""Train one stage of the SVD recipe: `python train.py stage=image|video|hq [overrides]`.

All stages in order, each from the previous one's weights (the basic launcher runs a sweep in
the order given): `python train.py -m stage=autoencoder,image,video,hq experiment=toy`.
"""

import logging
import sys

import hydra
from omegaconf import DictConfig

from vldm.training.cluster import PruneRequeueCheckpoints, slurm_environment_plugins
from vldm.training.run import TrainingDiverged, train_stage


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        # Lightning owns requeueing under SLURM (docs/cluster.md); the callback drops superseded hpc_ckpt_*.
        result = train_stage(cfg, callbacks=[PruneRequeueCheckpoints()], plugins=slurm_environment_plugins())
    except TrainingDiverged as err:
        logging.getLogger("train").error(str(err))
        sys.exit(1)
    print(f"[vldm] stage {cfg.stage.name}: {result.global_step} steps; weights {result.weights}; "
          f"run dir {result.run_dir}")


if __name__ == "__main__":
    main()
