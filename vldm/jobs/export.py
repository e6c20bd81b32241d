"""Export a trained video stage (image- or text-to-video) as one SVD-layout safetensors file (+ an sgm yaml).

    python -m vldm.jobs.export RUN_DIR OUT.safetensors [--dtype fp16|bf16|fp32]
"""

from __future__ import annotations

import argparse
import logging

from vldm.checkpoints.svd_export import DTYPES, export_svd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vldm.jobs.export", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a video / hq / i2v stage's run directory (config.yaml + model.safetensors)")
    parser.add_argument("out", help="the .safetensors file to write (its .yaml goes beside it)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="weight dtype (releases: fp16)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[vldm] %(message)s")
    result = export_svd(args.run_dir, args.out, DTYPES[args.dtype])
    print(f"[vldm] wrote {result.weights} ({result.num_tensors} tensors, {result.num_parameters / 1e6:.1f} M "
          f"parameters, scale_factor {result.scale_factor:.5f}) and {result.config}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
