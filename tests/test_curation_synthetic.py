"""Raw toy videos with known truth (data_curation.synthetic): frames, truth, files, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_curation.probe import probe_video
from data_curation.records import CurationError
from data_curation.synthetic import (
    BAD_FILES,
    RawToyConfig,
    generate_raw_video,
    load_truth,
    main,
    truth_path,
    write_raw_toy_videos,
)
from vldm.io.video_io import read_video


def _check_truth(frames: np.ndarray, truth: dict, cfg: RawToyConfig) -> None:
    assert frames.dtype == np.uint8 and frames.shape == (truth["num_frames"], cfg.size, cfg.size, 3)
    scenes = truth["scenes"]
    assert cfg.min_scenes <= len(scenes) <= cfg.max_scenes
    assert scenes[0]["start"] == 0 and scenes[-1]["end"] == truth["num_frames"]
    fades = iter(truth["fades"])
    cuts = iter(truth["cuts"])
    for prev, cur in zip(scenes, scenes[1:]):
        assert cfg.min_scene_frames <= prev["end"] - prev["start"] <= cfg.max_scene_frames
        # consecutive scenes differ: background, and shape or colour
        assert prev["background"] != cur["background"]
        assert prev["shape"] != cur["shape"] or prev["colour"] != cur["colour"]
        if cur["start"] == prev["end"]:  # hard cut: the new scene's first frame is the truth
            assert next(cuts) == cur["start"]
            jump = np.abs(frames[cur["start"]].astype(int) - frames[cur["start"] - 1]).max(axis=-1)
            assert (jump > 20).mean() > 0.5  # a real cut: most pixels change
        else:  # a fade fills exactly the gap, dimmed frames around black ones
            start, end = next(fades)
            assert (start, end) == (prev["end"], cur["start"] - 1)
            assert end - start + 1 == 2 * cfg.fade_frames + cfg.black_frames
            middle = frames[start + cfg.fade_frames : end + 1 - cfg.fade_frames]
            assert middle.size == 0 or middle.max() == 0
            means = frames[start - 1 : end + 2].reshape(end - start + 3, -1).mean(axis=1)
            bottom = int(np.argmin(means))
            assert np.all(np.diff(means[: bottom + 1]) <= 0) and np.all(np.diff(means[bottom:]) >= 0)
            assert means[0] > means[bottom] + 5 and means[-1] > means[bottom] + 5
    assert next(cuts, None) is None and next(fades, None) is None
    for scene in scenes:
        clip = frames[scene["start"] : scene["end"]].astype(int)
        moving = np.abs(np.diff(clip, axis=0)).max()
        assert (moving == 0) == scene["static"]
        assert scene["has_text"] == (scene["kind"] == "text")


def test_generate_raw_video_truth_is_consistent() -> None:
    cfg = RawToyConfig(size=32, fps=8, min_scenes=2, max_scenes=3, min_scene_frames=6, max_scene_frames=10,
                       fade_probability=0.5)
    kinds, n_cuts, n_fades = set(), 0, 0
    for seed in range(12):
        frames, truth = generate_raw_video(seed, cfg)
        _check_truth(frames, truth, cfg)
        kinds |= {s["kind"] for s in truth["scenes"]}
        n_cuts += len(truth["cuts"])
        n_fades += len(truth["fades"])
    assert kinds == {"clean", "static", "text"} and n_cuts > 3 and n_fades > 3


def test_generate_raw_video_is_deterministic_and_fades_without_black() -> None:
    cfg = RawToyConfig(size=16, min_scenes=3, max_scenes=3, min_scene_frames=5, max_scene_frames=5, fade_probability=1.0,
                       fade_frames=2, black_frames=0)
    a, ta = generate_raw_video(7, cfg)
    b, tb = generate_raw_video(7, cfg)
    c, _ = generate_raw_video(8, cfg)
    assert np.array_equal(a, b) and ta == tb and not np.array_equal(a, c)
    assert ta["cuts"] == [] and ta["fades"] == [[5, 8], [14, 17]] and ta["num_frames"] == 3 * 5 + 2 * 4
    _check_truth(a, ta, cfg)


def test_raw_toy_config_validation() -> None:
    for bad in (dict(size=7), dict(min_scenes=0), dict(min_scenes=3, max_scenes=2), dict(min_scene_frames=3),
                dict(fade_probability=1.5), dict(kinds=("clean", "cut"), kind_weights=(1, 1)), dict(kind_weights=(1.0,)),
                dict(kind_weights=(0, 0, 0)), dict(crf=60), dict(fade_frames=0)):
        with pytest.raises(ValueError):
            RawToyConfig(**bad)


def test_write_raw_toy_videos_files_truth_and_bad_files(tmp_path) -> None:
    cfg = RawToyConfig(size=32, min_scene_frames=8, max_scene_frames=12)
    root = tmp_path / "raw"
    paths = write_raw_toy_videos(root, 3, seed=5, cfg=cfg, bad_files=True)
    names = [p.name for p in paths]
    assert names == ["video_0000.mp4", "video_0001.mp4", "video_0002.mp4", *BAD_FILES]
    assert sorted(p.name for p in root.iterdir()) == sorted(names + [f"video_000{i}.txt" for i in range(3)])
    # the truth lives outside the input tree
    assert truth_path(root) == (tmp_path / "raw_truth.json").resolve() and truth_path(root).is_file()
    truth = load_truth(root)
    assert truth["bad_files"] == BAD_FILES and truth["seed"] == 5 and truth["config"]["size"] == 32
    for path in paths[:3]:
        t = truth["videos"][path.name]
        info = probe_video(path)
        assert (info.width, info.height, info.fps, info.num_frames) == (32, 32, 8.0, t["num_frames"])
        assert path.with_suffix(".txt").read_text().strip() == t["scenes"][0]["caption"]
    assert (root / "empty.mp4").stat().st_size == 0
    assert (root / "truncated.mp4").read_bytes() == paths[0].read_bytes()[: int(paths[0].stat().st_size * 0.4)]
    for name, code in BAD_FILES.items():
        with pytest.raises(CurationError) as err:
            probe_video(root / name)
        assert err.value.code == code, name
    # deterministic in the seed: the same frames and truth; the files decode to the same clips (the mp4
    # bytes matched in every run but one full-suite run, where one file differed: not relied on)
    again = write_raw_toy_videos(tmp_path / "again", 3, seed=5, cfg=cfg, bad_files=True, captions=False)
    assert load_truth(tmp_path / "again")["videos"] == truth["videos"]
    for a, b in zip(again[:3], paths[:3]):  # the videos; then come the bad files
        fa, fb = read_video(a)[0].astype(np.int16), read_video(b)[0].astype(np.int16)
        assert fa.shape == fb.shape and np.abs(fa - fb).mean() < 1.0
    assert not list((tmp_path / "again").glob("*.txt"))


def test_cli_writes_videos(tmp_path, capsys) -> None:
    root = tmp_path / "cli"
    paths = main(["--root", str(root), "--count", "2", "--seed", "1", "--bad-files", "--size", "32"])
    assert len(paths) == 2 + len(BAD_FILES) and all(p.exists() for p in paths)
    assert "wrote 6 input file(s)" in capsys.readouterr().out
    record = json.loads(truth_path(root).read_text())
    assert sorted(record["videos"]) == ["video_0000.mp4", "video_0001.mp4"] and record["count"] == 2
