"""Curate raw videos into filtered webdataset shards: `python -m data_curation input=DIR output=DIR`.

Options are those of ``configs/curate.yaml`` (e.g. ``engine=ray``, ``engine.workers=4``,
``filters.text.max=0.05``, ``shards.short_side=256``); rerunning the same command resumes.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from data_curation.pipeline import curate

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="curate")
def main(cfg: DictConfig) -> None:
    curate(cfg)


if __name__ == "__main__":
    main()
