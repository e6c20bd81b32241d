"""Evaluation across ranks: sharding, gathering and reducing give the single-process numbers."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from vldm.evaluation.frechet import FeatureStats, frechet_from_stats
from vldm.evaluation.ranks import all_gather_object_list, all_reduce_stats, shard_indices
from vldm.utils.distributed import process_group_rank_world

N, DIM = 37, 6  # odd on purpose: the ranks' shares differ in size


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    gen = rng.normal(size=(N, DIM)) @ rng.normal(size=(DIM, DIM))
    ref = rng.normal(loc=0.5, size=(N + 5, DIM))
    per_video = rng.uniform(size=N)
    return gen, ref, per_video


@pytest.mark.parametrize("n,world", [(0, 1), (1, 3), (5, 2), (37, 2), (37, 4), (8, 8), (3, 5)])
def test_shard_indices_partition_in_order(n: int, world: int) -> None:
    shares = [shard_indices(n, r, world) for r in range(world)]
    assert [i for s in shares for i in s] == list(range(n))
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_shard_indices_rejects_bad_rank() -> None:
    with pytest.raises(ValueError, match="not in a world"):
        shard_indices(4, 2, 2)


def test_single_process_helpers_are_identities() -> None:
    gen, _, _ = _data()
    assert process_group_rank_world() == (0, 1)
    assert all_gather_object_list([1, "a"]) == [1, "a"]
    stats = FeatureStats.from_features(gen)
    reduced = all_reduce_stats(stats)
    assert reduced is not stats and reduced.n == stats.n
    assert np.array_equal(reduced.sum, stats.sum) and np.array_equal(reduced.sum_outer, stats.sum_outer)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One rank: its share of the generated features and per-video values, then reduce / gather."""
    import torch.distributed as dist

    from vldm.evaluation.run import gather_per_video

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        gen, ref, per_video = _data()
        mine = shard_indices(N, rank, world)
        assert process_group_rank_world() == (rank, world)
        stats = all_reduce_stats(FeatureStats.from_features(gen[mine]))
        order, gathered = gather_per_video(mine, {"score": per_video[mine]})
        objects = all_gather_object_list([f"rank{rank}-{i}" for i in mine])
        np.savez(Path(out_dir) / f"rank{rank}.npz", n=stats.n, sum=stats.sum, sum_outer=stats.sum_outer,
                 fd=frechet_from_stats(stats, FeatureStats.from_features(ref)), order=np.array(order),
                 score=gathered["score"], objects=np.array(objects))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    """2 CPU processes (gloo), each with half the videos: reduced stats, Fréchet distance and gathered
    per-video values equal the single-process ones exactly (float64). The single process adds the same
    two halves, in rank order, as the all-reduce does."""
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    gen, ref, per_video = _data()
    single = FeatureStats.empty(DIM)
    for r in range(2):
        single.update(gen[shard_indices(N, r, 2)])
    fd_single = frechet_from_stats(single, FeatureStats.from_features(ref))
    whole = FeatureStats.from_features(gen)
    for r in range(2):
        got = np.load(tmp_path / f"rank{r}.npz")
        assert int(got["n"]) == N
        assert np.array_equal(got["sum"], single.sum) and np.array_equal(got["sum_outer"], single.sum_outer)
        assert float(got["fd"]) == fd_single
        assert abs(float(got["fd"]) - frechet_from_stats(whole, FeatureStats.from_features(ref))) <= 1e-10 * fd_single
        assert got["order"].tolist() == list(range(N))
        assert np.array_equal(got["score"], per_video)
        assert got["objects"].tolist() == [f"rank{0 if i < 19 else 1}-{i}" for i in range(N)]


def _evaluate_worker(rank: int, world: int, port: int, overrides: list[str]) -> None:
    import torch.distributed as dist

    from tests.helpers.configs import compose_eval
    from vldm.evaluation.run import evaluate

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        evaluate(compose_eval(overrides))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_folder_evaluation_on_two_ranks_matches_one(toy_root: Path, tmp_path: Path) -> None:
    """The whole run (folder mode: reference stats, per-video metrics, FRPD) on 2 gloo ranks writes the
    numbers of a single process: per-video values exactly, Fréchet distances to float64 round-off."""
    import json

    import torch.multiprocessing as mp

    from tests.helpers.configs import compose_eval
    from tests.helpers.evaluation import base_overrides, write_folder
    from vldm.evaluation.reference import load_reference_clips
    from vldm.evaluation.run import evaluate

    refs = load_reference_clips(f"{toy_root}/videos/val-*.tar", 5, 6, 32)
    folder = write_folder(tmp_path / "videos", refs.videos[::-1].copy())  # 5 videos: shares of 3 and 2
    common = [f"videos={folder}", "data.num_videos=5", "metrics.warping=false"]
    one = evaluate(compose_eval(base_overrides(toy_root, tmp_path / "one", tmp_path / "cache1") + common))
    overrides = base_overrides(toy_root, tmp_path / "two", tmp_path / "cache2") + common
    mp.spawn(_evaluate_worker, args=(2, _free_port(), overrides), nprocs=2, join=True)
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2 and len(list((tmp_path / "cache2").glob("*.npz"))) == 1
    a, b = one["results"][0], two["checkpoints"][0]
    assert a["per_video"] == b["per_video"] and len(b["per_video"]["psnr"]) == 5
    assert set(a["metrics"]) == set(b["metrics"])
    for name, m in a["metrics"].items():
        assert b["metrics"][name]["value"] == pytest.approx(m["value"], rel=1e-9, abs=1e-12), name
        assert b["metrics"][name]["protocol"]["num_videos"] == 5
