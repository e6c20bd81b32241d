"""Curate raw videos into filtered webdataset shards: `python -m data_curation input=DIR output=DIR`.

Options are those of ``configs/curate.yaml`` (e.g. ``engine=ray``, ``engine.workers=4``,
``filters.text.max=0.05``, ``shards.short_side=256``); rerunning the same command resumes.
"""

import hydra
from omegaconf import DictConfig

from data_curation.config import CONFIG_DIR, register
from data_curation.pipeline import curate


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="curate")
def main(cfg: DictConfig) -> None:
    curate(cfg)


if __name__ == "__main__":
    register()
    main()
