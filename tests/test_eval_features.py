"""Feature networks (FVD / FID stand-ins), CLIP metrics and protocol bookkeeping."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vldm.evaluation.clip_metrics import ClipVideoMetrics
from vldm.evaluation.feature_nets import (FeatureNet, I3DFeatures, InceptionFeatures, check_videos,
                                          resize_videos)
from vldm.evaluation.frechet import FeatureStats, frechet_from_stats
from vldm.evaluation.protocol import MIN_COUNTS, EvalProtocol, count_warning

TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                                            "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


class TinyI3D(nn.Module):
    """Random stand-in with the StyleGAN-V I3D TorchScript call convention; it rejects any other
    call (layout, dtype, kwargs) so the tests check how the wrapper calls it."""

    def __init__(self, dim: int = 12) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(3, 16, kernel_size=3, stride=(1, 2, 2))
        self.fc = nn.Linear(32, dim)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.dim() != 5 or x.shape[1] != 3:
            raise RuntimeError("expected uint8 (b, 3, t, h, w)")
        if not (rescale and resize and return_features):
            raise RuntimeError("StyleGAN-V calls rescale=True, resize=True, return_features=True")
        v = x.float() / 127.5 - 1.0
        v = F.interpolate(v, size=(x.shape[2], 24, 24), mode="trilinear", align_corners=False)
        h = torch.relu(self.conv(v))
        pooled = torch.cat([h.mean(dim=(2, 3, 4)), (h[:, :, 1:] - h[:, :, :-1]).abs().mean(dim=(2, 3, 4))], dim=1)
        return self.fc(pooled)


class TinyInception(nn.Module):
    """Stand-in with NVlabs' Inception TorchScript call convention (uint8 (b, 3, h, w))."""

    def __init__(self, dim: int = 10) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 16, kernel_size=3, stride=2)
        self.fc = nn.Linear(16, dim)

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        if img.dtype != torch.uint8 or img.dim() != 4 or img.shape[1] != 3:
            raise RuntimeError("expected uint8 (b, 3, h, w)")
        if not return_features:
            raise RuntimeError("FID calls return_features=True")
        x = F.interpolate(img.float() / 255.0, size=(29, 29), mode="bilinear", align_corners=False)
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("nets")
    i3d, inc = root / "tiny_i3d.pt", root / "tiny_inception.pt"
    with warnings.catch_warnings():  # torch >= 2.9: "torch.jit.script is deprecated"
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(TinyI3D().eval()).save(str(i3d))
        torch.jit.script(TinyInception().eval()).save(str(inc))
    return {"i3d": str(i3d), "inception": str(inc)}


def moving_squares(n: int, t: int, size: int, speed: float, seed: int, noise: float = 0.0) -> np.ndarray:
    """uint8 (n, t, size, size, 3): a bright square moving right by ``speed`` px/frame on a grey field."""
    rng = np.random.default_rng(seed)
    out = np.full((n, t, size, size, 3), 60.0)
    for i in range(n):
        x0, y0 = rng.uniform(0, size / 2, 2)
        color = rng.uniform(150, 255, 3)
        for k in range(t):
            x = int(x0 + speed * k) % size
            out[i, k, int(y0):int(y0) + size // 4, x:x + size // 4] = color
    out += rng.normal(0, noise, out.shape) if noise else 0.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_fvd_end_to_end_with_tiny_i3d(nets) -> None:
    net = I3DFeatures(nets["i3d"], batch_size=3, resolution=32, dim=12)
    assert isinstance(net, FeatureNet) and net.name == "tiny_i3d" and net.num_frames == 16
    real = moving_squares(24, 16, 32, speed=2.0, seed=0)
    real2 = moving_squares(24, 16, 32, speed=2.0, seed=1)
    fake = moving_squares(24, 16, 32, speed=2.0, seed=2, noise=40.0)
    f_real = net.features(real)
    assert f_real.shape == (24, 12) and f_real.dtype == np.float64
    # batching does not change features
    np.testing.assert_allclose(I3DFeatures(nets["i3d"], batch_size=8, resolution=32, dim=12).features(real),
                               f_real, rtol=1e-5, atol=1e-6)
    s_real = FeatureStats.from_features(f_real)
    same = frechet_from_stats(s_real, s_real)
    close = frechet_from_stats(s_real, FeatureStats.from_features(net.features(real2)))
    far = frechet_from_stats(s_real, FeatureStats.from_features(net.features(fake)))
    assert same <= 1e-8
    assert 0.0 < close < far


def test_fid_end_to_end_with_tiny_inception(nets) -> None:
    net = InceptionFeatures(nets["inception"], batch_size=16, resolution=32, dim=10)
    assert net.num_frames is None and net.name == "tiny_inception"
    real = moving_squares(6, 8, 32, speed=1.0, seed=0).reshape(-1, 32, 32, 3)
    real2 = moving_squares(6, 8, 32, speed=1.0, seed=1).reshape(-1, 32, 32, 3)
    fake = 255 - moving_squares(6, 8, 32, speed=1.0, seed=3).reshape(-1, 32, 32, 3)  # negatives
    f_real = net.features(real)
    assert f_real.shape == (48, 10) and f_real.dtype == np.float64
    s_real = FeatureStats.from_features(f_real)
    close = frechet_from_stats(s_real, FeatureStats.from_features(net.features(real2)))
    far = frechet_from_stats(s_real, FeatureStats.from_features(net.features(fake)))
    assert frechet_from_stats(s_real, s_real) <= 1e-8
    assert 0.0 < close < far


def test_absent_weights_name_file_and_source(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"i3d_torchscript\.pt.*dropbox.*metrics\.fvd\.weights"):
        I3DFeatures(str(tmp_path / "i3d_torchscript.pt"))
    with pytest.raises(FileNotFoundError, match=r"inception-2015-12-05\.pt.*nvlabs-fi-cdn.*metrics\.fid\.weights"):
        InceptionFeatures(str(tmp_path / "inception-2015-12-05.pt"))
    with pytest.raises(FileNotFoundError, match=r"metrics\.clip\.weights.*open_clip_pytorch_model\.bin.*laion2b_s34b_b79k"):
        ClipVideoMetrics()
    with pytest.raises(FileNotFoundError, match=r"CLIP weights not found: .*missing\.bin.*metrics\.clip\.weights"):
        ClipVideoMetrics(weights=str(tmp_path / "missing.bin"))


def test_check_videos_messages(nets) -> None:
    net = I3DFeatures(nets["i3d"], resolution=32, dim=12)
    good = np.zeros((2, 16, 32, 32, 3), np.uint8)
    check_videos(good, net)
    with pytest.raises(ValueError, match=r"FVD needs 16 frames per video \(StyleGAN-V protocol\), got 8.*metrics\.fvd\.num_frames"):
        net.features(good[:, :8])
    with pytest.raises(ValueError, match=r"resolution mismatch.*32x32 but got 64x64.*resize_videos"):
        net.features(np.zeros((2, 16, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=r"expects uint8 pixels 0..255, got float32"):
        net.features(good.astype(np.float32))
    with pytest.raises(ValueError, match=r"channels-first"):
        net.features(np.zeros((2, 16, 3, 32, 32), np.uint8))
    inc = InceptionFeatures(nets["inception"], resolution=32, dim=10)
    with pytest.raises(ValueError, match=r"\(n, h, w, 3\).*got shape \(2, 16, 32, 32, 3\)"):
        inc.features(good)
    with pytest.raises(ValueError, match=r"metrics\.fid\.resolution"):
        inc.features(np.zeros((2, 16, 16, 3), np.uint8))
    # a stand-in with the wrong feature dimension is reported, not silently used
    with pytest.raises(ValueError, match="returned 12 features, expected 400"):
        I3DFeatures(nets["i3d"], resolution=32).features(good)


def test_resize_videos() -> None:
    v = moving_squares(2, 3, 64, 1.0, 0)
    r = resize_videos(v, 32)
    assert r.shape == (2, 3, 32, 32, 3) and r.dtype == np.uint8
    assert abs(float(r.mean()) - float(v.mean())) < 1.0
    assert resize_videos(v, 64) is v


def test_clip_metrics_tiny_model() -> None:
    m = ClipVideoMetrics(model_config=TINY_CLIP, batch_size=5)
    rng = np.random.default_rng(0)
    videos = rng.integers(0, 256, (3, 4, 40, 48, 3), dtype=np.uint8)
    captions = ["a red ball", "a cat on a mat", "waves at sunset"]
    score = m.clip_score(videos, captions)
    assert score.shape == (3,) and np.all((score >= 0) & (score <= 100))
    np.testing.assert_allclose(ClipVideoMetrics(model_config=TINY_CLIP).clip_score(videos, captions), score, rtol=1e-5)
    cons = m.temporal_consistency(videos)
    assert cons.shape == (3,) and np.all(cons < 1.0 - 1e-4)
    static = np.repeat(videos[:, :1], 4, axis=1)
    np.testing.assert_allclose(m.temporal_consistency(static), 1.0, atol=1e-5)
    # clip score = 100 * mean over frames of max(cos, 0): check against the embeddings
    img, txt = m.image_embeddings(videos), m.text_embeddings(captions)
    np.testing.assert_allclose(score, 100 * np.maximum(np.einsum("ntd,nd->nt", img, txt), 0).mean(1), rtol=1e-6)
    with pytest.raises(ValueError, match="3 videos but 2 captions"):
        m.clip_score(videos, captions[:2])


def test_protocol_key_and_count_warning() -> None:
    p = EvalProtocol("fvd", "i3d_torchscript", 2048, 16, 256, 8.0, "0-2047", {"dataset": "toy", "steps": 25})
    assert p.key() == EvalProtocol("fvd", "i3d_torchscript", 2048, 16, 256, 8.0, "0-2047",
                                   {"steps": 25, "dataset": "toy"}).key()  # order-independent
    assert len(p.key()) == 12 and p.key() == p.key()
    assert p.key() == "f3196f4ee4d8"  # stable across runs and machines (sha256 of sorted JSON)
    variants = [EvalProtocol("fvd", "i3d_torchscript", 2047, 16, 256, 8.0, "0-2047", {"dataset": "toy", "steps": 25}),
                EvalProtocol("fvd", "i3d_torchscript", 2048, 16, 128, 8.0, "0-2047", {"dataset": "toy", "steps": 25}),
                EvalProtocol("fvd", "i3d_torchscript", 2048, 16, 256, 8.0, "1-2048", {"dataset": "toy", "steps": 25}),
                EvalProtocol("fvd", "i3d_torchscript", 2048, 16, 256, 8.0, "0-2047", {"dataset": "toy", "steps": 50}),
                EvalProtocol("frpd", "rp256-s0", 2048, 16, 256, 8.0, "0-2047", {"dataset": "toy", "steps": 25})]
    assert len({p.key(), *(v.key() for v in variants)}) == 6
    assert p.as_dict()["extra"] == {"dataset": "toy", "steps": 25} and hash(p) == hash(p)
    assert p.warning() is None
    assert count_warning("fvd", 48) == ("FVD from 48 videos is not comparable to published numbers "
                                        "(StyleGAN-V protocol uses 2048; under 256 it is mostly noise)")
    assert count_warning("FVD", 256) is None
    assert "FID from 100 frames" in count_warning("fid", 100, unit="frames")
    assert "under 64" in count_warning("frpd", 10)
    assert count_warning("unknown_metric", 1) is None
    assert MIN_COUNTS["fvd"] == 256
