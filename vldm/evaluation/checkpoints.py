"""Which checkpoints to evaluate for a mode, and loading each one as a video model of that mode.

A spec is a stage's run directory (``runs/demo/hq``), a run root holding stage directories
(``runs/demo``), a weights file (``model.safetensors`` or a Lightning ``checkpoints/step=N.ckpt``),
or a list of these. The mode picks the video task: ``t2v`` evaluates the text-to-video stages (a run
root gives image, video, hq; its i2v stage is skipped with a note), ``i2v`` the image-to-video ones
(image, i2v; video and hq skipped). An explicit checkpoint of the other video task is refused,
naming the mode that evaluates it.

The image stage (SVD stage I, text-to-image) is evaluated as a video model by *inflating* it into
the mode's video model (Blattmann et al., 2023): its UNet goes into the video UNet with identity
temporal layers, zero new input channels and a zero vector-conditioning embedding
(:func:`vldm.nn.inflate.load_image_weights`, what stage II starts from), so the result generates
frame by frame with the image model — the paper's "stage 1 inflated" baseline. Into a text-to-video
model its text tower comes along (the conditioner's caption embedder is the image stage's own).

Steps across runs: a run that started from another vldm run's weights (``stage.init_from`` in its
``config.yaml`` naming that run's ``model.safetensors`` or one of its ``checkpoints/step=N.ckpt``)
counts its steps on from there: its ``offset`` is the init run's own offset plus the step of the
file it started from (the init run's ``result.json`` ``global_step`` for ``model.safetensors``). So
``runs/real/hq`` trained 10 steps from ``runs/demo/video`` (which ended at 530 counted from the
start of stage I) sits at 540. A run that started from no file, or from a file outside any vldm
run (a released model), counts from 0. Each run directory is its own series (``run``:
``<experiment>/<stage>``, the run directory's last two parts).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

STAGE_ORDER: tuple[str, ...] = ("image", "video", "hq", "i2v")
MODE_TASKS: dict[str, str] = {"t2v": "text_to_video", "i2v": "image_to_video"}
TASK_MODES: dict[str, str] = {task: mode for mode, task in MODE_TASKS.items()}
_STEP_CKPT = re.compile(r"^step=(\d+)\.ckpt$")


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint to evaluate.

    ``kind``: ``final`` (the stage's exported ``model.safetensors``), ``step`` (a Lightning
    ``step=N.ckpt``, its EMA weights) or ``file`` (a weights file given directly).
    ``video_config``: for an image-stage checkpoint, the ``config.yaml`` of the video model it is
    inflated into (``None`` for video checkpoints); its task (text- or image-to-video) is the mode's.
    ``offset``: training steps before this run started (see the module doc), so ``offset + step`` is
    the step counted from the start of the first run of its lineage (the x axis of the plots).
    ``init_run`` / ``init_step``: the run directory and step this run started from (``None`` when it
    started from no vldm run).
    """

    name: str
    stage: str
    step: int | None
    run_dir: Path
    weights_path: Path
    kind: str
    video_config: Path | None = None
    offset: int = 0
    init_run: Path | None = None
    init_step: int | None = None

    @property
    def run(self) -> str:
        """The run's name: ``<experiment>/<stage>`` (the run directory's last two parts)."""
        return f"{self.run_dir.parent.name}/{self.run_dir.name}"

    @property
    def inflated(self) -> bool:
        return self.video_config is not None

    @property
    def cumulative_step(self) -> int | None:
        return None if self.step is None else self.offset + self.step


def stage_task(cfg: DictConfig) -> str:
    """A stage config's model task: ``text_to_image``, ``text_to_video`` or ``image_to_video``
    (as :attr:`vldm.models.latent_diffusion.LatentDiffusion.task`)."""
    from vldm.checkpoints.load import diffusion_config

    diffusion = diffusion_config(cfg.model)
    if diffusion.get("image_to_video", False):
        return "image_to_video"
    return "text_to_video" if OmegaConf.select(diffusion, "network.video", default=False) else "text_to_image"


def task_words(task: str, article: bool = False) -> str:
    """``text_to_video`` -> ``text-to-video`` (``a text-to-video`` / ``an image-to-video`` with ``article``)."""
    words = task.replace("_", "-")
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}" if article else words


def check_mode(mode: str) -> str:
    """``mode`` when it is one of :data:`MODE_TASKS`, else ValueError."""
    if mode not in MODE_TASKS:
        raise ValueError(f"mode must be one of {', '.join(MODE_TASKS)} (t2v: from each reference clip's caption, "
                         f"i2v: from its first frame), got {mode!r}")
    return mode


def _check_task(what: str | Path, cfg: DictConfig, mode: str) -> None:
    """Refuse a video stage of the other task than ``mode``'s, naming the mode that evaluates it."""
    task = stage_task(cfg)
    if task != "text_to_image" and task != MODE_TASKS[mode]:
        raise ValueError(f"{what} belongs to the {task_words(task)} stage {cfg.stage.name!r}, but mode={mode} "
                         f"evaluates {task_words(MODE_TASKS[mode])} models: evaluate it with mode={TASK_MODES[task]}")


def _stage_cfg(run_dir: Path) -> DictConfig:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no config.yaml: not a vldm stage run directory")
    return OmegaConf.load(path)


def _final_step(run_dir: Path) -> int | None:
    path = run_dir / "result.json"
    if not path.is_file():
        return None
    return int(json.loads(path.read_text()).get("global_step", 0))


def _stage_dirs(root: Path) -> list[tuple[Path, DictConfig]]:
    """Stage run directories under a run root, in stage order (known stages first)."""
    found = [(d, _stage_cfg(d)) for d in sorted(root.iterdir()) if d.is_dir() and (d / "config.yaml").is_file()]
    rank = {name: i for i, name in enumerate(STAGE_ORDER)}
    return sorted(found, key=lambda item: (rank.get(str(item[1].stage.name), len(rank)), item[0].name))


def _find_video_config(root: Path, explicit: str | Path | None, mode: str) -> Path:
    """The video model an image stage is inflated into: ``explicit`` (a config.yaml or a stage run
    dir, of the mode's task), else the first stage of the mode's task in ``root``."""
    task = MODE_TASKS[mode]
    if explicit:
        path = Path(explicit)
        path = path / "config.yaml" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"video_config {explicit}: no such config.yaml")
        found = stage_task(OmegaConf.load(path))
        if found != task:
            raise ValueError(f"video_config {explicit} is {task_words(found, True)} model; mode={mode} inflates the "
                             f"image stage into {task_words(task, True)} model: give its stage run dir or config.yaml")
        return path
    for d, cfg in _stage_dirs(root) if root.is_dir() else []:
        if cfg.stage.get("kind") == "diffusion" and stage_task(cfg) == task:
            return d / "config.yaml"
    raise FileNotFoundError(
        f"the image stage is evaluated inflated into the {task_words(task)} model (mode={mode}), but {root} holds "
        f"no {task_words(task)} stage config: set video_config=<that stage's run dir or its config.yaml>")


def _refs_for_stage(run_dir: Path, cfg: DictConfig, every: str, line: Lineage,
                    video_config: str | Path | None, mode: str) -> list[CheckpointRef]:
    stage = str(cfg.stage.name)
    inflate_into = None if stage_task(cfg) != "text_to_image" else _find_video_config(run_dir.parent, video_config,
                                                                                      mode)
    label = f"{stage} (inflated)" if inflate_into else stage
    refs = []
    if every == "all":
        for path in sorted((run_dir / "checkpoints").glob("step=*.ckpt")):
            match = _STEP_CKPT.match(path.name)
            if match:
                step = int(match.group(1))
                refs.append(CheckpointRef(f"{label} @{step}", stage, step, run_dir, path, "step", inflate_into,
                                          line.offset, line.init_run, line.init_step))
    final = run_dir / "model.safetensors"
    if final.is_file():
        step = _final_step(run_dir)
        export = CheckpointRef(label, stage, step, run_dir, final, "final", inflate_into, line.offset,
                               line.init_run, line.init_step)
        # the final export and the last step checkpoint of the same step: keep the export
        refs = [r for r in refs if step is None or r.step != step] + [export]
    if not refs:
        raise FileNotFoundError(f"stage run {run_dir} has no model.safetensors"
                                + (" and no checkpoints/step=*.ckpt" if every == "all" else
                                   " (unfinished? every=all also evaluates checkpoints/step=*.ckpt)"))
    return refs


@dataclass(frozen=True)
class Lineage:
    """Where a run's steps start: ``offset`` steps trained before it, from ``init_run`` at ``init_step``."""

    offset: int = 0
    init_run: Path | None = None
    init_step: int | None = None


def _init_path(run_dir: Path, cfg: DictConfig) -> Path | None:
    """``stage.init_from`` of a run as a path; a relative one is taken from the directory training ran
    in (``run_dir`` less the relative ``paths.output_dir``), else from the current directory."""
    init = cfg.stage.get("init_from")
    if not init:
        return None
    path = Path(str(init))
    if path.is_absolute():
        return path
    output_dir = Path(str(OmegaConf.select(cfg, "paths.output_dir", default="") or ""))
    parts = [p for p in output_dir.parts if p != "."]
    if parts and not output_dir.is_absolute() and list(run_dir.parts[-len(parts):]) == parts:
        from_root = Path(*run_dir.parts[:-len(parts)]) / path
        if from_root.exists():
            return from_root
    return path


def _init_checkpoint(path: Path) -> tuple[Path, int] | None:
    """``(run dir, step)`` of a vldm run's ``model.safetensors`` or ``checkpoints/step=N.ckpt``; else None."""
    match = _STEP_CKPT.match(path.name)
    run_dir = path.parent.parent if match and path.parent.name == "checkpoints" else path.parent
    if not (run_dir / "config.yaml").is_file():
        return None
    if match:
        return run_dir, int(match.group(1))
    step = _final_step(run_dir) if path.name == "model.safetensors" else None
    return None if step is None else (run_dir, step)


def run_lineage(run_dir: Path, say: Callable[[str], None] = print, _seen: tuple[Path, ...] = ()) -> Lineage:
    """The steps trained before ``run_dir`` along its ``stage.init_from`` chain (see the module doc)."""
    run_dir = Path(run_dir)
    init = _init_path(run_dir, _stage_cfg(run_dir))
    if init is None:
        return Lineage()
    found = _init_checkpoint(init)
    name = f"{run_dir.parent.name}/{run_dir.name}"
    if found is None:
        say(f"[vldm] eval: {name} started from {init}, not a vldm run's export with a result.json: its steps "
            f"count from 0")
        return Lineage()
    init_run, init_step = found
    seen = (*_seen, run_dir.resolve())
    if init_run.resolve() in seen:
        say(f"[vldm] eval: {name} started from {init}, whose own lineage leads back to {name}: its steps count "
            f"from 0")
        return Lineage()
    before = run_lineage(init_run, lambda _: None, seen)  # earlier runs speak for themselves when evaluated
    return Lineage(before.offset + init_step, init_run, init_step)


def _resolve_one(spec: str | Path, every: str, video_config: str | Path | None, mode: str,
                 say: Callable[[str], None]) -> list[CheckpointRef]:
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {spec} does not exist (give a run root like runs/demo, a stage run "
                                f"dir like runs/demo/hq, or a weights file)")
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        cfg = _stage_cfg(run_dir)
        if cfg.stage.get("kind") != "diffusion":
            raise ValueError(f"{path} belongs to the {cfg.stage.get('kind')} stage {cfg.stage.name!r}: an autoencoder "
                             f"makes no videos; give a diffusion stage (image, video, hq, i2v)")
        _check_task(path, cfg, mode)
        match = _STEP_CKPT.match(path.name)
        step = int(match.group(1)) if match else _final_step(run_dir) if path.name == "model.safetensors" else None
        stage = str(cfg.stage.name)
        inflate_into = None if stage_task(cfg) != "text_to_image" else _find_video_config(
            run_dir.parent, video_config, mode)
        label = f"{stage} (inflated)" if inflate_into else stage
        name = label if path.name == "model.safetensors" else f"{label} @{step}" if step is not None else \
            f"{label} {path.name}"
        line = run_lineage(run_dir, say)
        return [CheckpointRef(name, stage, step, run_dir, path, "step" if match else "file", inflate_into,
                              line.offset, line.init_run, line.init_step)]
    if (path / "config.yaml").is_file():
        cfg = _stage_cfg(path)
        if cfg.stage.get("kind") != "diffusion":
            raise ValueError(f"{path} is the {cfg.stage.get('kind')} stage {cfg.stage.name!r}: an autoencoder makes "
                             f"no videos; give a diffusion stage (image, video, hq, i2v) or the run root {path.parent}")
        _check_task(path, cfg, mode)
        return _refs_for_stage(path, cfg, every, run_lineage(path, say), video_config, mode)
    stages = _stage_dirs(path)
    if not stages:
        raise FileNotFoundError(f"{path} is neither a stage run dir (no config.yaml) nor a run root (no stage "
                                f"directories with a config.yaml inside)")
    refs: list[CheckpointRef] = []
    for d, cfg in stages:
        if cfg.stage.get("kind") != "diffusion":
            say(f"[vldm] eval: skipping {d.name} ({cfg.stage.get('kind')} stage: makes no videos)")
            continue
        task = stage_task(cfg)
        if task not in ("text_to_image", MODE_TASKS[mode]):
            say(f"[vldm] eval: skipping {d.name} ({task_words(task)} stage: mode={TASK_MODES[task]} evaluates it)")
            continue
        refs += _refs_for_stage(d, cfg, every, run_lineage(d, say), video_config, mode)
    if not refs:
        raise ValueError(f"{path} holds no diffusion stage (found: {', '.join(d.name for d, _ in stages)})")
    return refs


def resolve_checkpoints(spec: str | Path | list[str | Path], every: str = "final",
                        video_config: str | Path | None = None,
                        say: Callable[[str], None] = print, mode: str = "i2v") -> list[CheckpointRef]:
    """Checkpoints named by ``spec`` for ``mode`` (see the module doc), in the order given / stage order.

    ``every``: ``final`` (each stage's ``model.safetensors``) or ``all`` (also every
    ``checkpoints/step=N.ckpt``). ``video_config``: the video model image stages are inflated into
    (default: the first stage of the mode's task beside them in the same run root: video for t2v, i2v for i2v).
    """
    check_mode(mode)
    if every not in ("final", "all"):
        raise ValueError(f"every must be 'final' or 'all', got {every!r}")
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    if not specs:
        raise ValueError("no checkpoints given")
    refs = [ref for s in specs for ref in _resolve_one(s, every, video_config, mode, say)]
    names = [r.name for r in refs]
    if len(set(names)) != len(names):  # e.g. two run roots: qualify by the run root's name
        refs = [replace(r, name=f"{r.run_dir.parent.name}/{r.name}") for r in refs]
    return refs


# ---------------------------------------------------------------------------------------- loading
def checkpoint_state(ref: CheckpointRef) -> dict[str, torch.Tensor]:
    """The weights of ``ref`` in the export layout (EMA weights for Lightning checkpoints)."""
    from vldm.checkpoints.export import export_state_dict
    from vldm.io.safe_load import load_state_dict_file

    state = load_state_dict_file(ref.weights_path)
    return export_state_dict(state) if ref.weights_path.suffix == ".ckpt" else state


def _frozen_conditioner_from(model, video_weights: Path) -> None:
    """The video stage's exported conditioner weights where this model has the same keys (frozen towers)."""
    from vldm.checkpoints.stage_weights import sub_state
    from vldm.io.safe_load import load_state_dict_file

    if not video_weights.is_file():
        return
    own = model.conditioner.state_dict()
    frozen = {k: v for k, v in sub_state(load_state_dict_file(video_weights), "conditioner.").items() if k in own}
    model.conditioner.load_state_dict({**own, **frozen})


def load_checkpoint(ref: CheckpointRef, device: str | torch.device = "cpu"):
    """``(model, train_cfg)``: the checkpoint as a video :class:`~vldm.models.LatentDiffusion` in eval mode,
    and the training config of the model it is (the video stage's for an inflated image stage).

    Inflation builds the video model seeded with its stage's ``seed`` (as training starts it) and
    inflates the image weights into it with :func:`vldm.checkpoints.stage_weights.inflate_into`, from
    the weights in memory (EMA weights of a step checkpoint included). The conditioner: into a
    text-to-video model, the image stage's own text tower (``inflate_into`` takes it, as training
    does); into an image-to-video model, the frozen conditioner of the video stage's export when
    present (identical to its start, it never trains).
    """
    from vldm.checkpoints.load import build_model
    from vldm.checkpoints.stage_weights import inflate_into
    from vldm.io.safe_load import load_strict

    state = checkpoint_state(ref)
    if not ref.inflated:
        cfg = _stage_cfg(ref.run_dir)
        model = build_model(cfg.model)
        load_strict(model, state, what=str(ref.weights_path))
        return model.to(device).eval(), cfg
    cfg = OmegaConf.load(ref.video_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.get("seed", 0)))
        model = build_model(cfg.model)
    if model.task == "image_to_video":
        _frozen_conditioner_from(model, ref.video_config.parent / "model.safetensors")
    inflate_into(model, state, str(ref.weights_path))  # a text-to-video model takes the image's text tower
    return model.to(device).eval(), cfg
