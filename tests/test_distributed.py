"""Multi-process training: DDP on CPU (gloo) through ``train.py``, the per-reader data split,
per-rank noise, gradient accumulation, and the FSDP wrap policy with EMA on sharded weights."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from tests.helpers.configs import compose_train
from tests.helpers.models import TINY_UNET
from tests.helpers.repo import REPO
from tests.helpers.smoke import smoke_video_args
from vldm.training.run import stage_module


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class KeyRecorder(Callback):
    """Test probe: per rank, the sample keys trained on, a digest of the RNG state each step
    starts with, and at the end digests of the live and EMA weights (``rank<r>.json``)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.keys: list[str] = []
        self.rng: list[str] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.keys += list(batch["__key__"])
        self.rng.append(hashlib.sha256(torch.random.get_rng_state().numpy().tobytes()).hexdigest())

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        live = {k: v for k, v in pl_module.network.state_dict().items()}
        ema = pl_module.model_ema.shadow.state_dict() if pl_module.model_ema is not None else {}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps({
            "keys": self.keys, "rng": self.rng, "global_step": trainer.global_step, "world": trainer.world_size,
            "live": tensor_digest(live), "ema": tensor_digest(ema),
            "ema_updates": int(pl_module.model_ema.num_updates) if pl_module.model_ema is not None else 0,
        }))


def recorder_override(out_dir: Path) -> str:
    return f"+trainer.callbacks=[{{_target_:tests.test_distributed.KeyRecorder,out_dir:'{out_dir}'}}]"


def run_train(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", WANDB_MODE="offline", WANDB_SILENT="true")
    env.pop("WANDB_API_KEY", None)
    # an in-process wandb.init of an earlier test leaves WANDB_SERVICE set; a child inheriting it would
    # register its run with this process's wandb service, which still holds the killed run's id
    env.pop("WANDB_SERVICE", None)
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_two_process_ddp_sees_different_samples_and_keeps_weights_in_sync(tmp_path: Path, toy_root: Path) -> None:
    """2 ranks x 3 steps with gloo, launched like a user would (Lightning starts rank 1)."""
    probe = tmp_path / "probe"
    args = smoke_video_args(tmp_path, toy_root, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                            "trainer.precision=32-true", "stage.max_steps=3", "stage.checkpoint_every=3",
                            "data.shuffle_buffer=0", recorder_override(probe))
    proc = run_train(args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["global_step"] == r1["global_step"] == 3
    # each rank trained on its own 3 x 2 samples, none shared
    assert len(r0["keys"]) == len(r1["keys"]) == 6
    assert len(set(r0["keys"])) == 6 and len(set(r1["keys"])) == 6 and not set(r0["keys"]) & set(r1["keys"])
    # different noise on the two ranks at every step; gradients all-reduced: the same weights after the steps
    assert all(a != b for a, b in zip(r0["rng"], r1["rng"]))
    assert r0["live"] == r1["live"] and r0["ema"] == r1["ema"] and r0["ema_updates"] == 3

    run_dir = tmp_path / "runs" / "smoke" / "video"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["world_size"] == 2 and result["global_step"] == 3
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    position = ckpt["callbacks"]["DataPosition"]
    assert position["world"] == 2 and set(position["workers"]) == {"0", "1"}  # both ranks' stream positions
    # the checkpoint reloads strictly into a fresh module, and holds the weights both ranks ended with
    cfg = compose_train(smoke_video_args(tmp_path, toy_root))
    torch.manual_seed(cfg.seed)  # as train_stage seeds before building: the run's initial weights
    initial = stage_module(cfg).network.state_dict()
    module = stage_module(cfg)
    module.load_state_dict(ckpt["state_dict"], strict=True)
    assert tensor_digest(module.network.state_dict()) == r0["live"]
    assert tensor_digest(module.model_ema.shadow.state_dict()) == r0["ema"]
    trained = [n for n, v in module.network.state_dict().items() if not torch.equal(v, initial[n])]
    assert len(trained) > len(initial) // 2  # the weights did move (identical weights are not a no-op)


def _with_rank_world(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> None:
    import vldm.data.shards as shards

    monkeypatch.setattr(shards, "_rank_world", lambda: (rank, world))


def _one_pass(dataset: Any, monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> dict[int, list[str]]:
    """Keys of passes 0, 1 and 2 of one reader (from an endless stream)."""
    _with_rank_world(monkeypatch, rank, world)
    by_pass: dict[int, list[str]] = {}
    for sample in dataset:
        epoch = int(sample["__pos__"][2])
        if epoch == 3:
            break
        by_pass.setdefault(epoch, []).append(sample["__key__"])
    return by_pass


@pytest.mark.parametrize("world", [2, 5])  # 3 shards: split by shard (2 readers), by sample index (5)
def test_readers_split_every_pass_disjointly_and_the_split_changes(toy_root: Path, world: int,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from vldm.data.shards import ImageDataset

    shards = sorted(str(p) for p in (toy_root / "images").glob("train-*.tar"))[:3]
    passes = [_one_pass(ImageDataset(shards, size=8, shuffle_buffer=4, seed=0), monkeypatch, r, world)
              for r in range(world)]
    everything = [k for r in passes for k in r[0]]
    for epoch in (0, 1, 2):
        keys = [k for r in passes for k in r[epoch]]
        assert len(keys) == len(set(keys)) == len(set(everything))  # every sample once per pass
    assert any(set(r[0]) != set(r[e]) for r in passes for e in (1, 2))  # the assignment is reshuffled per pass


def test_capped_finite_pass_is_split_evenly(toy_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation (max_samples, no repeat) gives every rank as many samples: DDP would hang otherwise."""
    from vldm.data.shards import ImageDataset

    def counts(world: int, cap: int) -> list[int]:
        out = []
        for rank in range(world):
            _with_rank_world(monkeypatch, rank, world)
            out.append(len(list(ImageDataset(str(toy_root / "images"), size=8, repeat=False, max_samples=cap))))
        return out

    assert counts(2, 5) == [2, 2]
    assert counts(3, 2) == [1, 1, 1]  # fewer samples than ranks: one each, shared


def test_step_seed_differs_per_rank_and_step_and_is_reproducible() -> None:
    from vldm.training.data_state import step_seed

    seeds = {step_seed(0, rank, step, micro) for rank in range(4) for step in range(50) for micro in range(2)}
    assert len(seeds) == 400 and step_seed(0, 1, 7, 0) == step_seed(0, 1, 7, 0) != step_seed(1, 1, 7, 0)


def test_configs_compose_for_ddp_and_fsdp() -> None:
    from hydra.utils import instantiate
    from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy

    from vldm.training.strategies import UNetBlockPolicy

    cfg = compose_train(["trainer=ddp", "trainer.num_nodes=4", "trainer.devices=8"])
    assert cfg.trainer.num_nodes == 4 and cfg.trainer.accumulate_grad_batches == 1
    ddp = instantiate(cfg.trainer.strategy)
    assert isinstance(ddp, DDPStrategy) and ddp._ddp_kwargs["find_unused_parameters"] is False
    fsdp = instantiate(compose_train(["trainer=fsdp"]).trainer.strategy)
    assert isinstance(fsdp, FSDPStrategy) and fsdp.mixed_precision.param_dtype == torch.bfloat16
    assert fsdp.mixed_precision.reduce_dtype == torch.float32
    assert isinstance(fsdp.kwargs["auto_wrap_policy"], UNetBlockPolicy)
    assert isinstance(fsdp._activation_checkpointing_kwargs["auto_wrap_policy"], UNetBlockPolicy)
    assert compose_train(["trainer=fsdp"]).trainer.precision == "bf16-mixed"


def _holder(video: bool = True) -> torch.nn.Module:
    from vldm.nn.unet import UNet
    from vldm.training.ema import EMA

    class Holder(torch.nn.Module):
        """The LightningModule's layout in small: ``network`` and its EMA copy."""

        def __init__(self) -> None:
            super().__init__()
            self.network = UNet(**TINY_UNET, video=video)
            self.model_ema = EMA(self.network, 0.9)

        def forward(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            return self.network(x, sigma, context, num_frames=2, image_only_indicator=torch.zeros(x.shape[0] // 2, 2))

    return Holder()


def test_wrap_units_are_the_blocks_of_every_unet_when_callable_else_the_unets() -> None:
    from vldm.training.strategies import block_units, callable_blocks, unet_blocks

    holder = _holder()
    live, shadow = holder.network, holder.model_ema.shadow
    if not callable_blocks(live):  # blocks run layer by layer by the UNet: the UNet is the unit
        assert block_units(holder) == [live, shadow] and block_units(holder, include_unet=False) == []

        class Block(torch.nn.ModuleList):
            def forward(self, h: torch.Tensor, *args: Any) -> torch.Tensor:
                return h

        for unet in (live, shadow):  # what a UNet with callable blocks looks like to the policy
            unet.input_blocks = torch.nn.ModuleList(Block(list(b)) for b in unet.input_blocks)
            unet.middle_block = Block(list(unet.middle_block))
            unet.output_blocks = torch.nn.ModuleList(Block(list(b)) for b in unet.output_blocks)
    blocks = unet_blocks(live)
    assert len(blocks) == len(live.input_blocks) + 1 + len(live.output_blocks) and callable_blocks(live)
    units = block_units(holder)
    assert units == [live, *blocks, shadow, *unet_blocks(shadow)]
    assert block_units(holder, include_unet=False) == [*blocks, *unet_blocks(shadow)]


def _fsdp_worker(rank: int, world: int, port: int, out: str) -> None:
    """Rank ``rank`` of an FSDP (gloo, CPU) run: 3 SGD steps + EMA updates on its half of a batch."""
    import torch.distributed as dist
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from vldm.training.strategies import UNetBlockPolicy

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    holder = _holder()
    model = FSDP(holder, auto_wrap_policy=UNetBlockPolicy(), device_id=torch.device("cpu"), use_orig_params=True)
    apply_activation_checkpointing(model, auto_wrap_policy=UNetBlockPolicy(include_unet=False))
    opt = torch.optim.SGD(holder.network.parameters(), lr=0.05)
    batch = _fsdp_batch()
    half = slice(rank * 2, rank * 2 + 2)  # 2 videos of 2 frames per rank
    for _ in range(3):
        opt.zero_grad()
        pred = model(batch["x"][half].flatten(0, 1), batch["sigma"][half].flatten(), batch["ctx"][half].flatten(0, 1))
        ((pred - batch["y"][half].flatten(0, 1)) ** 2).mean().backward()
        opt.step()
        holder.model_ema.update(holder.network)
    cfg = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, cfg):
        state = model.state_dict()
    if rank == 0:
        torch.save({"state": state, "repr": repr(model)}, out)
    dist.destroy_process_group()


def _fsdp_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"x": torch.randn(4, 2, 4, 8, 8, generator=g), "y": torch.randn(4, 2, 4, 8, 8, generator=g),
            "sigma": torch.rand(4, 2, generator=g), "ctx": torch.randn(4, 2, 3, 24, generator=g)}


@pytest.mark.slow
def test_fsdp_block_wrapping_trains_like_one_process_with_ema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FSDP over 2 CPU ranks with the UNet block policy and activation checkpointing equals
    single-process training on the whole batch — live weights and the EMA kept on shards."""
    import socket

    import torch.multiprocessing as mp

    from vldm.training.strategies import block_units

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "fsdp.pt"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # 3 processes on few cores: no thread oversubscription
    mp.start_processes(_fsdp_worker, args=(2, port, str(out)), nprocs=2, join=True, start_method="spawn")
    got = torch.load(out, weights_only=True)
    torch.manual_seed(0)
    initial = _holder().state_dict()
    assert got["repr"].count("FullyShardedDataParallel(") == 1 + len(block_units(_holder()))  # root + units
    assert got["repr"].count("CheckpointWrapper(") == len(block_units(_holder(), include_unet=False))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ref = _holder()
    opt = torch.optim.SGD(ref.network.parameters(), lr=0.05)
    batch = _fsdp_batch()
    for _ in range(3):
        opt.zero_grad()
        pred = ref(batch["x"].flatten(0, 1), batch["sigma"].flatten(), batch["ctx"].flatten(0, 1))
        ((pred - batch["y"].flatten(0, 1)) ** 2).mean().backward()
        opt.step()
        ref.model_ema.update(ref.network)
    torch.set_num_threads(threads)
    expected = ref.state_dict()
    assert set(got["state"]) == set(expected)  # clean names: no FSDP / checkpoint-wrapper prefixes
    for name, value in expected.items():
        torch.testing.assert_close(got["state"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    moved = {n for n, v in expected.items() if not torch.equal(v, initial[n])}
    live_moved = {n[len("network."):] for n in moved if n.startswith("network.")}
    ema_moved = {n[len("model_ema.shadow."):] for n in moved if n.startswith("model_ema.shadow.")}
    assert len(live_moved) > 50 and ema_moved == live_moved  # the EMA followed every weight that trained


@pytest.mark.slow
def test_gradient_accumulation_steps_the_optimizer_and_the_ema_once_per_window(tmp_path: Path,
                                                                              toy_root: Path) -> None:
    from vldm.training.run import train_stage

    probe = tmp_path / "probe"
    cfg = compose_train(smoke_video_args(tmp_path, toy_root, "stage.max_steps=2", "stage.checkpoint_every=2",
                                         "trainer.accumulate_grad_batches=2", recorder_override(probe)))
    result = train_stage(cfg)
    record = json.loads((probe / "rank0.json").read_text())
    assert result.global_step == 2 and record["global_step"] == 2
    assert len(record["keys"]) == 2 * 2 * cfg.data.batch_size  # 2 optimizer steps x 2 micro-batches
    assert record["ema_updates"] == 2  # the EMA follows optimizer steps, not micro-batches
    assert len(set(record["rng"])) == 4  # every micro-batch draws its own noise
    ckpt = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert int(next(iter(ckpt["optimizer_states"][0]["state"].values()))["step"]) == 2


@pytest.mark.slow
def test_fsdp_through_lightning_trains_and_resumes_like_ddp(tmp_path: Path, toy_root: Path) -> None:
    """``trainer=fsdp`` end to end on 2 CPU ranks (tests/cpu_fsdp.py): the frozen encoders stay out of
    FSDP and gradients are clipped across shards; after 3 steps, and again after both runs resume to
    step 5, the checkpoint's weights, EMA and optimizer state and the exported weights equal a DDP run's."""
    from safetensors.torch import load_file

    common = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true", "stage.checkpoint_every=3",
              "data.shuffle_buffer=0"]
    strategies = {"fsdp": ["trainer=fsdp", "trainer.strategy._target_=tests.cpu_fsdp.CPUFSDPStrategy",
                           "trainer.strategy.mixed_precision=null"],
                  "ddp": ["trainer=ddp"]}

    def run_dir(name: str) -> Path:
        return tmp_path / name / "runs" / "smoke" / "video"

    first: dict[str, torch.Tensor] = {}
    for steps in (3, 5):
        for name, extra in strategies.items():
            proc = run_train(smoke_video_args(tmp_path / name, toy_root, *extra, *common, f"stage.max_steps={steps}"))
            assert proc.returncode == 0, proc.stderr[-4000:]
            log = proc.stdout + proc.stderr
            assert ("resuming from" in log) == (steps == 5)
            if name == "fsdp":
                assert "FSDP: 2 frozen part(s) replicated, not sharded" in log
        f, d = (torch.load(run_dir(n) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
                for n in ("fsdp", "ddp"))
        assert f["global_step"] == d["global_step"] == steps
        assert set(f["state_dict"]) == set(d["state_dict"])  # clean names, EMA included, no FSDP prefixes
        for key, value in d["state_dict"].items():
            torch.testing.assert_close(f["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
        fo, do = f["optimizer_states"][0]["state"], d["optimizer_states"][0]["state"]
        assert set(fo) == set(do) and len(do) > 100
        for pid, state in do.items():
            for name, value in state.items():
                torch.testing.assert_close(fo[pid][name], value, rtol=1e-5, atol=1e-9, msg=f"{pid}.{name}")
        fw, dw = load_file(run_dir("fsdp") / "model.safetensors"), load_file(run_dir("ddp") / "model.safetensors")
        assert set(fw) == set(dw) and all(torch.allclose(fw[k], dw[k], rtol=1e-5, atol=1e-6) for k in dw)
        if steps == 3:
            first = f["state_dict"]
            cfg = compose_train(smoke_video_args(tmp_path, toy_root))
            stage_module(cfg).load_state_dict(f["state_dict"], strict=True)
    moved = [k for k, v in f["state_dict"].items() if k.startswith("diffusion.model.") and not torch.equal(v, first[k])]
    assert len(moved) > 100  # the resumed steps trained
