"""Merge LoRA files into a base model and write the merged model (Hu et al., 2021: ``W + scale * alpha / r * B A``).

    python -m vldm.jobs.merge_lora BASE OUT --lora camera_pan_left.safetensors:1.0 [--lora other.safetensors:0.5]
        [--svd merged_svd.safetensors] [--dtype fp16|bf16|fp32]
    python -m vldm.jobs.merge_lora /models/svd_xt.safetensors merged.safetensors --model svd_xt --lora pan.safetensors

BASE a vldm run directory (or its model.safetensors): OUT is a new run directory (its config.yaml and a merged
model.safetensors), which sample.py, init_from and ``vldm.jobs.export`` read like any run; ``--svd FILE`` also
exports it in the SVD layout. BASE an official file with ``--model``: OUT is a merged file in its own (SGM) layout.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from vldm.adapters.merge import apply_loras, parse_lora_arg
from vldm.checkpoints.svd_export import DTYPES
from vldm.io.safe_load import file_metadata, save_safetensors

log = logging.getLogger(__name__)
KEPT_METADATA = ("stage", "global_step", "fps")


def merge_run(base: str | Path, out: str | Path, loras: list[tuple[Path, float]]) -> Path:
    """A new run directory ``out``: ``base``'s config and its model with ``loras`` merged; returns its weights file."""
    from vldm.checkpoints.load import load_run, resolve_run

    run_dir, weights = resolve_run(base)
    out = Path(out)
    if out.resolve() == run_dir.resolve():
        raise ValueError(f"refusing to overwrite the base run {run_dir}: give another output directory")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: give a new directory for the merged run")
    model, _ = load_run(weights)
    apply_loras(model.network, loras, merge=True)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "config.yaml", out / "config.yaml")
    metadata = {k: v for k, v in file_metadata(weights).items() if k in KEPT_METADATA}
    metadata["merged_loras"] = json.dumps([[str(Path(p).resolve()), s] for p, s in loras])
    metadata["merged_into"] = str(weights.resolve())
    return save_safetensors(model.state_dict(), out / "model.safetensors", metadata)


def merge_file(base: str | Path, model_name: str, out: str | Path, loras: list[tuple[Path, float]],
               dtype: str | None = None) -> Path:
    """An official file (``model_name``'s config, e.g. svd_xt) with ``loras`` merged, in the same layout."""
    from hydra import compose, initialize_config_dir

    from vldm.checkpoints.load import load_model_file

    out = Path(out)
    if out.suffix != ".safetensors" or out.resolve() == Path(base).resolve():
        raise ValueError(f"the output must be a new .safetensors file, got {out}")
    configs = Path(__file__).resolve().parents[2] / "configs"
    with initialize_config_dir(str(configs), version_base=None):
        model_cfg = compose("train", overrides=[f"model={model_name}"]).model
    model = load_model_file(model_cfg, base, dtype=DTYPES[dtype] if dtype else None)
    apply_loras(model.network, loras, merge=True)
    metadata = {"merged_loras": json.dumps([[str(Path(p).resolve()), s] for p, s in loras]),
                "merged_into": str(Path(base).resolve()), "model": model_name}
    return save_safetensors(model.state_dict(), out, metadata)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vldm.jobs.merge_lora", description=__doc__.split("\n")[0])
    parser.add_argument("base", help="a vldm run directory (or its model.safetensors), or an official file with --model")
    parser.add_argument("out", help="the merged run directory (a vldm base) or .safetensors file (an official base)")
    parser.add_argument("--lora", action="append", required=True, help="PATH or PATH:SCALE (repeat for several)")
    parser.add_argument("--model", help="the model config of an official base file (svd, svd_xt, sd21, ...)")
    parser.add_argument("--svd", help="also export the merged run in the SVD layout to this .safetensors file")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="weight dtype of the merged official file or of the --svd export")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[vldm] %(message)s")
    loras = [parse_lora_arg(item) for item in args.lora]
    if args.model:
        if args.svd:
            parser.error("--svd exports a merged vldm run; a merged official file is in the SGM layout already")
        path = merge_file(args.base, args.model, args.out, loras, args.dtype)
        print(f"[vldm] wrote {path} ({len(loras)} LoRA merged into {args.base})")
        return 0
    path = merge_run(args.base, args.out, loras)
    print(f"[vldm] wrote {path} ({len(loras)} LoRA merged into {args.base})")
    if args.svd:
        from vldm.checkpoints.svd_export import export_svd

        result = export_svd(args.out, args.svd, DTYPES[args.dtype])
        print(f"[vldm] exported {result.weights} in the SVD layout ({result.num_tensors} tensors)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
