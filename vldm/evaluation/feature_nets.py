"""Pretrained feature networks for FVD and FID, loaded from local TorchScript files.

- FVD (Unterthiner et al., 2018) under the StyleGAN-V protocol (Skorokhodov et al., 2022,
  ``src/metrics/frechet_video_distance.py``): the Kinetics-400 I3D ported to TorchScript,
  ``i3d_torchscript.pt``, called as ``detector(x, rescale=True, resize=True,
  return_features=True)`` on uint8 ``x`` of layout ``(b, 3, t, h, w)`` with values 0..255
  (``rescale`` maps them to [-1, 1], ``resize`` to 224x224 inside the network); the features are
  the 400 pre-softmax logits. Clips are 16 consecutive frames (``fvd2048_16f``: 2048 videos).
- FID (Heusel et al., 2017) as StyleGAN2-ADA (``metrics/frechet_inception_distance.py``):
  NVlabs' TorchScript port of the TF Inception-v3, ``inception-2015-12-05.pt``, called as
  ``detector(x, return_features=True)`` on uint8 ``(b, 3, h, w)`` 0..255 (resized to 299 inside);
  features are the 2048-d pool features.

TorchScript is loaded with ``torch.jit.load``: the one exception to this project's safe-loading
rule, because that is how both networks are published (a TorchScript archive holds code and
tensors, not a pickle of arbitrary objects; still, only load files from their published source).
Any TorchScript module with the same call convention works (the tests use tiny random ones).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np
import torch

I3D_FILE = "i3d_torchscript.pt"
I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1"
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"

FVD_NUM_FRAMES = 16        # StyleGAN-V fvd2048_16f
FVD_RESOLUTION = 256       # StyleGAN-V's datasets are 256x256; the I3D resizes to 224 itself
FID_RESOLUTION = 256


@runtime_checkable
class FeatureNet(Protocol):
    """A feature extractor for a Fréchet distance.

    ``num_frames``: frames per video for a video network, ``None`` for an image network.
    ``resolution``: the square input size videos / frames must have (unless
    ``accepts_any_size``, for networks that resize internally as part of their definition).
    ``features``: uint8 ``(n, t, h, w, 3)`` videos (video net) or ``(n, h, w, 3)`` frames
    (image net) -> ``(n, dim)`` float64.
    """

    name: str
    num_frames: int | None
    resolution: int
    dim: int
    accepts_any_size: bool

    def features(self, x: np.ndarray) -> np.ndarray: ...


def _config_hint(net: FeatureNet) -> str:
    return "metrics.fvd" if net.num_frames is not None else "metrics.fid"


def check_videos(x: np.ndarray, net: FeatureNet) -> None:
    """Raise a clear ValueError unless ``x`` is what ``net.features`` takes.

    Video nets: uint8 ``(n, t, h, w, 3)`` with ``t == net.num_frames`` and
    ``h == w == net.resolution``; image nets: uint8 ``(n, h, w, 3)``, same resolution.
    Nets with ``accepts_any_size`` only have layout and dtype checked.
    """
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{net.name} takes numpy uint8 arrays, got {type(x).__name__}")
    video = net.num_frames is not None
    layout = "(n, t, h, w, 3)" if video else "(n, h, w, 3)"
    ndim = 5 if video else 4
    if x.ndim != ndim or x.shape[-1] != 3:
        hint = ""
        if x.ndim == ndim and x.shape[-3 if video else 1] == 3:
            hint = " (channels-first? move the channel axis last)"
        raise ValueError(f"{net.name} expects uint8 {'videos' if video else 'frames'} {layout} RGB, "
                         f"got shape {x.shape}{hint}")
    if x.dtype != np.uint8:
        raise ValueError(f"{net.name} expects uint8 pixels 0..255, got {x.dtype} "
                         "(convert with vldm.video.pixels.tensor_to_frames or (x + 1) * 127.5 rounded)")
    if x.shape[0] == 0:
        raise ValueError(f"{net.name}: no videos given")
    if net.accepts_any_size:
        return
    if video and x.shape[1] != net.num_frames:
        raise ValueError(f"{net.name}: FVD needs {net.num_frames} frames per video (StyleGAN-V protocol), "
                         f"got {x.shape[1]}: generate more frames, take the first {net.num_frames}, or set "
                         f"{_config_hint(net)}.num_frames (the number is then not comparable to published FVD)")
    h, w = x.shape[-3], x.shape[-2]
    if (h, w) != (net.resolution, net.resolution):
        raise ValueError(f"{net.name}: resolution mismatch, the protocol feeds {net.resolution}x{net.resolution} "
                         f"but got {h}x{w}: resize both generated and reference videos to it "
                         f"(vldm.evaluation.feature_nets.resize_videos) or set {_config_hint(net)}.resolution")


def resize_videos(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``(..., h, w, 3)`` -> ``(..., size, size, 3)``: area interpolation when shrinking,
    bicubic when enlarging (no crop: non-square inputs are stretched)."""
    if x.shape[-3:-1] == (size, size):
        return x
    flat = x.reshape(-1, *x.shape[-3:])
    interp = cv2.INTER_AREA if min(x.shape[-3:-1]) > size else cv2.INTER_CUBIC
    out = np.stack([cv2.resize(np.ascontiguousarray(f), (size, size), interpolation=interp) for f in flat])
    return out.reshape(*x.shape[:-3], size, size, 3)


def load_torchscript(path: str | Path, what: str, published: str, config_key: str,
                     device: str = "cpu") -> torch.jit.ScriptModule:
    """``torch.jit.load`` a local file, or FileNotFoundError naming it and its published source."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found: {path} (expected {Path(published.split('?')[0]).name}, "
                                f"published at {published}); download it and set {config_key}")
    with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript deprecated; these nets exist only as it
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location=device).eval()


class _TorchScriptFeatures:
    name: str
    num_frames: int | None
    resolution: int
    dim: int
    accepts_any_size: bool = False

    def __init__(self, module: torch.jit.ScriptModule, batch_size: int, device: str, dim: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.module = module
        self.batch_size = int(batch_size)
        self.device = device
        self.dim = int(dim)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def _run(self, x: np.ndarray) -> np.ndarray:
        check_videos(x, self)
        outs = []
        for i in range(0, x.shape[0], self.batch_size):
            out = self._call(torch.from_numpy(np.ascontiguousarray(x[i:i + self.batch_size])).to(self.device))
            if out.ndim != 2 or out.shape[0] != min(self.batch_size, x.shape[0] - i):
                raise ValueError(f"{self.name} returned shape {tuple(out.shape)}; expected (batch, features)")
            outs.append(out.detach().to("cpu", torch.float64).numpy())
        feats = np.concatenate(outs)
        if feats.shape[1] != self.dim:
            raise ValueError(f"{self.name} returned {feats.shape[1]} features, expected {self.dim} "
                             "(is this the right network file?)")
        return feats


class I3DFeatures(_TorchScriptFeatures):
    """FVD features: StyleGAN-V's I3D TorchScript (``i3d_torchscript.pt``, 400-d).

    ``dim`` is only for stand-in networks (tests). ``videos``: uint8 ``(n, 16, resolution,
    resolution, 3)``; fed as uint8 ``(b, 3, t, h, w)`` with
    ``rescale=True, resize=True, return_features=True``, exactly as StyleGAN-V's
    ``compute_feature_stats_for_*`` (``temporal_detector=True``) does.
    """

    def __init__(self, path: str, batch_size: int = 8, device: str = "cpu", num_frames: int = FVD_NUM_FRAMES,
                 resolution: int = FVD_RESOLUTION, dim: int = 400, config_key: str = "metrics.fvd.weights") -> None:
        module = load_torchscript(path, "I3D (FVD)", I3D_URL, config_key, device)
        super().__init__(module, batch_size, device, dim)
        self.name = Path(path).stem  # "i3d_torchscript" for the published file
        self.num_frames = int(num_frames)
        self.resolution = int(resolution)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.permute(0, 4, 1, 2, 3).contiguous(), rescale=True, resize=True, return_features=True)

    def features(self, videos: np.ndarray) -> np.ndarray:
        """uint8 ``(n, t, h, w, 3)`` -> ``(n, 400)`` float64."""
        return self._run(videos)


class InceptionFeatures(_TorchScriptFeatures):
    """FID features: NVlabs' Inception-v3 TorchScript (``inception-2015-12-05.pt``, 2048-d pool).

    ``dim`` is only for stand-in networks (tests). ``frames``: uint8 ``(n, resolution,
    resolution, 3)``; fed as uint8 ``(b, 3, h, w)`` with
    ``return_features=True``, as StyleGAN2-ADA's ``compute_fid`` does.
    """

    def __init__(self, path: str, batch_size: int = 32, device: str = "cpu", resolution: int = FID_RESOLUTION,
                 dim: int = 2048, config_key: str = "metrics.fid.weights") -> None:
        module = load_torchscript(path, "Inception-v3 (FID)", INCEPTION_URL, config_key, device)
        super().__init__(module, batch_size, device, dim)
        self.name = Path(path).stem  # "inception-2015-12-05" for the published file
        self.num_frames = None
        self.resolution = int(resolution)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.permute(0, 3, 1, 2).contiguous(), return_features=True)

    def features(self, frames: np.ndarray) -> np.ndarray:
        """uint8 ``(n, h, w, 3)`` -> ``(n, 2048)`` float64. For videos pass ``videos.reshape(-1, h, w, 3)``."""
        return self._run(frames)
