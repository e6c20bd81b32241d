"""Curation scorers on toy clips with known truth: motion separates static from moving clips, the CLIP
scorer matches a hand computation and names its missing files, captions are kept or filled, and every
scorer pickles (to worker processes) and scores identically afterwards."""

from __future__ import annotations

import pickle
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest

from data_curation.records import Clip, ClipSpan, Scorer
from data_curation.scorers import (
    CaptionScorer,
    ClipScorer,
    MotionScorer,
    TextScorer,
    TransformersCaptioner,
    sample_indices,
)
from vldm.data.toy import ToyVideoConfig, generate_clip
from vldm.video.motion import FlowProtocol, mean_flow_magnitude

TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                                            "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def make_clip(frames: np.ndarray, fps: float, caption: str | None = None, index: int = 0) -> Clip:
    return Clip(video_id="0123456789abcdef", index=index, source="toy.mp4", span=ClipSpan(0, len(frames)),
                fps=fps, frames=frames, caption=caption)


def toy_clips(kind: str, size: int, n: int, num_frames: int = 16, fps: int = 8, seed0: int = 0) -> list[Clip]:
    cfg = ToyVideoConfig(size=size, num_frames=num_frames, fps=fps)
    out = []
    for seed in range(seed0, seed0 + n):
        frames, meta = generate_clip(seed, kind, cfg)
        out.append(make_clip(frames, fps, meta["caption"], seed))
    return out


# --- motion ---------------------------------------------------------------------------------------


def test_sample_indices_take_every_fps_over_2_th_frame_and_fall_back_on_short_clips() -> None:
    assert sample_indices(16, 8.0, 2.0) == [0, 4, 8, 12]
    assert sample_indices(48, 24.0, 2.0) == [0, 12, 24, 36]
    assert sample_indices(50, 29.97, 2.0) == [0, 15, 30, 45]
    assert sample_indices(3, 24.0, 2.0) == [0, 2]  # shorter than one step: first and last frame
    assert sample_indices(2, 24.0, 2.0) == [0, 1]  # consecutive frames
    assert sample_indices(1, 24.0, 2.0) == []


@pytest.mark.parametrize("method", ["dis", "farneback"])
@pytest.mark.parametrize("size", [32, 64, 128])
def test_motion_separates_static_from_moving_toy_clips(size: int, method: str) -> None:
    scorer = MotionScorer(method=method)
    static = [scorer.score(c) for c in toy_clips("static", size, 24)]
    moving = [scorer.score(c) for c in toy_clips("clean", size, 24)]
    max_static = max(s["motion_score"] for s in static)
    min_moving = min(s["motion_score"] for s in moving)
    assert max_static < scorer.static_threshold < min_moving, (size, method, max_static, min_moving)
    assert all(s["static"] is True for s in static)
    assert all(s["static"] is False for s in moving)


def test_motion_separates_after_h264_round_trip(tmp_path: Path) -> None:
    """The pipeline scores decoded frames: compression noise must not make static clips move."""
    from vldm.io.video_io import encode_mp4, read_video

    scorer = MotionScorer()
    scores: dict[str, list[float]] = {}
    for kind in ("static", "clean"):
        for clip in toy_clips(kind, 64, 12, seed0=100):
            path = tmp_path / f"{kind}_{clip.index}.mp4"
            path.write_bytes(encode_mp4(clip.frames, 8, 28))
            frames, _ = read_video(str(path))
            scores.setdefault(kind, []).append(scorer.score(make_clip(frames, 8.0))["motion_score"])
    assert max(scores["static"]) < scorer.static_threshold < min(scores["clean"])


def test_motion_score_is_the_evaluation_definition_on_sampled_frames() -> None:
    clip = toy_clips("clean", 64, 1, num_frames=24, fps=12)[0]
    got = MotionScorer(method="farneback", short_side=32).score(clip)["motion_score"]
    want = mean_flow_magnitude(clip.frames[[0, 6, 12, 18]], FlowProtocol("farneback", 32, 1))
    assert got == want and got > 0.0


def test_motion_on_a_one_frame_clip_is_none_and_bad_arguments_raise() -> None:
    frames = np.zeros((1, 32, 32, 3), np.uint8)
    assert MotionScorer().score(make_clip(frames, 8.0)) == {"motion_score": None, "static": None}
    with pytest.raises(ValueError):
        MotionScorer(method="lucas-kanade")
    with pytest.raises(ValueError):
        MotionScorer(short_side=4)


# --- scorer protocol, pickling, other processes -------------------------------------------------------


def _score_in_worker(scorer_bytes: bytes, clip: Clip) -> dict:
    return pickle.loads(scorer_bytes).score(clip)


def test_scorers_follow_the_protocol_pickle_and_score_identically_in_another_process() -> None:
    clip = toy_clips("text", 64, 1, num_frames=16)[0]
    scorers = [MotionScorer(), MotionScorer(method="farneback"), TextScorer(), CaptionScorer()]
    for s in scorers:
        assert isinstance(s, Scorer) and s.available and s.unavailable_reason == ""
    here = [s.score(clip) for s in scorers]  # loads the OCR detector
    blobs = [pickle.dumps(s) for s in scorers]  # after first use: loaded models are dropped
    assert [pickle.loads(b).score(clip) for b in blobs] == here
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        there = list(pool.map(_score_in_worker, blobs, [clip] * len(blobs)))
    assert there == here
    assert here[2]["text_ratio"] > 0.07 and here[2]["text_boxes"] >= 1


# --- captions -------------------------------------------------------------------------------------


class FakeCaptioner:
    def __init__(self, available: bool = True) -> None:
        self.calls: list[tuple[int, ...]] = []
        self._available = available

    @property
    def available(self) -> bool:
        return self._available

    @property
    def unavailable_reason(self) -> str:
        return "" if self._available else "fake captioner: model file fake.bin missing"

    def caption(self, frames: np.ndarray) -> str:
        self.calls.append(frames.shape)
        return f"  a frame of mean {frames.mean():.1f}\n"


def test_caption_scorer_keeps_data_captions_and_fills_missing_ones_from_the_middle_frame() -> None:
    frames = np.stack([np.full((8, 12, 3), v, np.uint8) for v in (10, 20, 30, 40, 50)])
    fake = FakeCaptioner()
    scorer = CaptionScorer(fake)
    assert scorer.score(make_clip(frames, 8.0, "a red circle")) == {"caption": "a red circle", "caption_source": "data"}
    assert fake.calls == []
    assert scorer.score(make_clip(frames, 8.0, None)) == {"caption": "a frame of mean 30.0", "caption_source": "model"}
    assert fake.calls == [(1, 8, 12, 3)]
    assert CaptionScorer(fake, overwrite=True).score(make_clip(frames, 8.0, "old"))["caption_source"] == "model"
    assert CaptionScorer().score(make_clip(frames, 8.0, None)) == {"caption": None, "caption_source": None}
    assert CaptionScorer().score(make_clip(frames, 8.0, "x")) == {"caption": "x", "caption_source": "data"}
    again = pickle.loads(pickle.dumps(scorer))
    assert again.score(make_clip(frames, 8.0, None)) == {"caption": "a frame of mean 30.0", "caption_source": "model"}


def test_caption_scorer_unavailable_with_an_unavailable_captioner(tmp_path: Path) -> None:
    scorer = CaptionScorer(FakeCaptioner(available=False))
    assert not scorer.available and "fake.bin" in scorer.unavailable_reason
    missing = tmp_path / "blip"
    local = TransformersCaptioner(str(missing))
    assert not local.available and str(missing) in local.unavailable_reason
    assert "scorers.captions.captioner.path" in local.unavailable_reason
    assert not CaptionScorer(local).available
    with pytest.raises(RuntimeError, match="no local captioning model"):
        local.caption(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(TypeError):
        CaptionScorer(captioner="not a captioner")  # type: ignore[arg-type]


# --- CLIP -----------------------------------------------------------------------------------------


def test_clip_scorer_names_the_files_it_needs(tmp_path: Path) -> None:
    s = ClipScorer()
    assert not s.available
    for part in ("ViT-L-14", "open_clip_pytorch_model.bin", "laion/CLIP-ViT-L-14-laion2B-s32B-b82K",
                 "scorers.clip.weights=PATH"):
        assert part in s.unavailable_reason
    missing = tmp_path / "nope.bin"
    assert str(missing) in ClipScorer(weights=str(missing)).unavailable_reason
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"x")
    head = tmp_path / "head.pth"
    r = ClipScorer(weights=str(weights), aesthetic_head=str(head)).unavailable_reason
    assert str(head) in r and "sa_0_4_vit_l_14_linear.pth" in r
    assert "nothing to compute" in ClipScorer(weights=str(weights), caption_similarity=False).unavailable_reason
    assert ClipScorer(weights=str(weights)).available  # similarity only
    with pytest.raises(RuntimeError, match="no weights given"):
        ClipScorer().score(make_clip(np.zeros((2, 8, 8, 3), np.uint8), 8.0))


@pytest.fixture(scope="module")
def tiny_clip_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch
    from safetensors.torch import save_file

    from vldm.conditioning.open_clip_towers import build_clip

    root = tmp_path_factory.mktemp("tiny_clip")
    model = build_clip(model_cfg=TINY_CLIP, init_seed=3)
    torch.save(model.state_dict(), root / "clip.bin")
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(1, 32, generator=g), torch.randn(1, generator=g)
    save_file({"weight": w, "bias": b}, str(root / "head.safetensors"))
    torch.save({"0.weight": w, "0.bias": b}, root / "head_seq.pt")
    torch.save({"weight": w, "bias": b, "extra": b}, root / "head_bad_keys.pt")
    torch.save({"weight": torch.randn(1, 16), "bias": b}, root / "head_bad_shape.pt")
    return {p.stem: p for p in root.iterdir()}


def _hand_aesthetic_and_similarity(files: dict[str, Path], frame: np.ndarray, caption: str) -> tuple[float, float]:
    import open_clip
    import torch
    import torch.nn.functional as F
    from open_clip.tokenizer import SimpleTokenizer

    model = open_clip.CLIP(**TINY_CLIP).eval()
    model.load_state_dict(torch.load(files["clip"], weights_only=True))
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
    h, w = frame.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top:top + side, left:left + side]
    x = F.interpolate(x, size=(32, 32), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        img = model.encode_image((x - mean) / std)
        img = img / img.norm(dim=-1, keepdim=True)
        txt = model.encode_text(SimpleTokenizer(context_length=16)([caption]))
        txt = txt / txt.norm(dim=-1, keepdim=True)
    head = torch.load(files["head_seq"], weights_only=True)
    return float(img @ head["0.weight"].T + head["0.bias"]), float((img * txt).sum())


def test_clip_scorer_with_a_tiny_random_model_matches_a_hand_computation(tiny_clip_files: dict[str, Path]) -> None:
    clip = toy_clips("clean", 64, 1, num_frames=8)[0]
    clip.frames = np.ascontiguousarray(clip.frames[:, 8:56])  # 48 x 64: exercises the centre crop
    scorer = ClipScorer(weights=str(tiny_clip_files["clip"]), aesthetic_head=str(tiny_clip_files["head"]),
                        model_config=TINY_CLIP)
    assert scorer.available, scorer.unavailable_reason
    fresh = pickle.dumps(scorer)  # before first use, as shipped to workers
    got = scorer.score(clip)
    assert set(got) == {"aesthetic", "clip_similarity"}
    want_aesthetic, want_similarity = _hand_aesthetic_and_similarity(tiny_clip_files, clip.frames[4], clip.caption)
    assert got["aesthetic"] == pytest.approx(want_aesthetic, abs=1e-5)
    assert got["clip_similarity"] == pytest.approx(want_similarity, abs=1e-5)
    assert -1.0 <= got["clip_similarity"] <= 1.0
    # deterministic across instances and pickling (before and after use), other head layout agrees
    assert pickle.loads(fresh).score(clip) == got
    assert pickle.loads(pickle.dumps(scorer)).score(clip) == got
    seq = ClipScorer(weights=str(tiny_clip_files["clip"]), aesthetic_head=str(tiny_clip_files["head_seq"]),
                     model_config=TINY_CLIP)
    assert seq.score(clip)["aesthetic"] == pytest.approx(got["aesthetic"], abs=1e-6)
    # no caption -> no similarity; no head -> no aesthetic; several frames -> mean over them
    clip.caption = None
    assert scorer.score(clip) == {"aesthetic": got["aesthetic"], "clip_similarity": None}
    no_head = ClipScorer(weights=str(tiny_clip_files["clip"]), model_config=TINY_CLIP)
    clip.caption = "a red circle"
    assert no_head.score(clip)["aesthetic"] is None
    three = ClipScorer(weights=str(tiny_clip_files["clip"]), aesthetic_head=str(tiny_clip_files["head"]),
                       model_config=TINY_CLIP, frames=("first", "middle", "last"))
    per_frame = [scorer.score(make_clip(clip.frames[i:i + 1], 8.0))["aesthetic"] for i in (0, 4, 7)]
    assert three.score(clip)["aesthetic"] == pytest.approx(float(np.mean(per_frame)), abs=1e-5)


@pytest.mark.parametrize("name,match", [("head_bad_keys", "expected keys"),
                                        ("head_bad_shape", r"expected weight \(1, 32\)")])
def test_clip_scorer_rejects_heads_of_the_wrong_layout(tiny_clip_files: dict[str, Path], name: str, match: str) -> None:
    scorer = ClipScorer(weights=str(tiny_clip_files["clip"]), aesthetic_head=str(tiny_clip_files[name]),
                        model_config=TINY_CLIP)
    with pytest.raises(ValueError, match=match):
        scorer.score(make_clip(np.zeros((2, 32, 32, 3), np.uint8), 8.0))
