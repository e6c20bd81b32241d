"""Evaluate checkpoints: `python -m vldm.evaluation checkpoints=runs/demo data.shards='data/toy/videos/val-*.tar'`
(the image-to-video stages; `mode=t2v`: the text-to-video ones).

Folder mode: `python -m vldm.evaluation videos=DIR data.shards=...`. See configs/evaluate.yaml.
Several GPUs: `torchrun --nproc_per_node=N -m vldm.evaluation ...` (each rank makes its share of the videos).
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from vldm.evaluation.ranks import init_from_env
from vldm.evaluation.run import evaluate

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    started = init_from_env()
    try:
        evaluate(cfg)
    finally:
        if started:
            import torch.distributed

            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
