"""Image-to-video (`python sample.py checkpoint=RUN_DIR_OR_FILE image=PATH`), text-to-video or text-to-image
(`prompt="..."` or `prompts=FILE`)."""

import hydra
from omegaconf import DictConfig

from vldm.sampling.run import sample_videos


@hydra.main(version_base="1.3", config_path="configs", config_name="sample")
def main(cfg: DictConfig) -> None:
    for path in sample_videos(cfg):
        print(f"[vldm] wrote {path} (+ {'.json' if path.suffix == '.png' else '.gif, .json'})")


if __name__ == "__main__":
    main()
