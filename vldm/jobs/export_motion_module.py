"""Export a video model's temporal layers alone as a motion module (:mod:`vldm.checkpoints.motion_module`).

    python -m vldm.jobs.export_motion_module --checkpoint RUN_DIR --out motion_module.safetensors

Attach it to another image model of the same architecture with ``train.py stage=video
stage.init_from=<image model> stage.init_mode=inflate stage.temporal_from=motion_module.safetensors``.
"""

from __future__ import annotations

import argparse
import json

from vldm.checkpoints.motion_module import export_motion_module
from vldm.io.safe_load import file_metadata


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: write the motion module and print what it holds."""
    parser = argparse.ArgumentParser(prog="python -m vldm.jobs.export_motion_module", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="a video model: a 'video' / 'hq' stage's run directory or its model.safetensors")
    parser.add_argument("--out", required=True, help="the motion module file to write (.safetensors)")
    args = parser.parse_args(argv)
    if not args.out.endswith(".safetensors"):
        parser.error(f"--out must name a .safetensors file, got {args.out}")
    path = export_motion_module(args.checkpoint, args.out)
    meta = file_metadata(path)
    keys = json.loads(meta["keys"])
    print(f"[vldm] wrote {path}: {len(keys)} temporal tensors of {meta['source']} "
          f"(stage {meta['source_stage'] or '?'}, sha256 {meta['source_sha256'][:12] or '?'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
