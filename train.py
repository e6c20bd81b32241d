"""Train one stage of the SVD recipe: `python train.py stage=image|video|hq [overrides]`.

All stages in order, each from the previous one's weights (the basic launcher runs a sweep in
the order given): `python train.py -m stage=autoencoder,image,video,hq experiment=toy`.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from vldm.training.launch import launch  # after the config checks: torch and Lightning load in seconds

    launch(cfg)


if __name__ == "__main__":
    main()
