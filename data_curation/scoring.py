"""Phase 2 of a curation run, per input: probe, prefilter, stream the frames once, find transitions, split, score.

:func:`score_input` is the engine task (one input in, one record out). It never raises: a
:class:`~data_curation.records.CurationError` becomes the record's ``error_code``, a scorer that
raises becomes ``scorer_error`` and anything else ``internal_error`` with the exception's last
line. The stages follow SVD (Blattmann et al. 2023, Sec. 3.1 / App. E): cascaded cut detection,
then clip-level scorers (motion, OCR text, CLIP, captions) on frames decoded once at the analysis
resolution (plus the sharper stills a scorer asks for), streamed through
:mod:`data_curation.analysis` so memory does not grow with the video's length. Probing and every
wait for decoded frames are bounded by ``decode_timeout_s``.

Scorers are built once per worker process: :func:`worker_state` keeps a small cache keyed by the
hash of the scoring settings (the one piece of module state, so a pool or Ray worker builds its
scorers on its first task and reuses them for the next ones).
"""

from __future__ import annotations

import hashlib
import json
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from data_curation.records import MANIFEST_COLUMNS, Clip, CurationError, StillsRequest, clip_id, video_id
from data_curation.work_dir import RECORD_VERSION

THUMB_QUALITY = 85
_RESERVED = (set(MANIFEST_COLUMNS) - {"caption"}) | {"fps", "num_frames"}
_STATE_CACHE: dict[str, "WorkerState"] = {}  # settings key -> built scorers; see the module docstring
_STATE_CACHE_SIZE = 2
DEFAULT_DECODE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class InputFile:
    """One input: its path relative to the input root (``source``), absolute path, caption, stamp."""

    source: str
    path: str
    caption: str | None
    stamp: dict[str, int]

    @property
    def video_id(self) -> str:
        return video_id(self.source)


@dataclass(frozen=True)
class ScoreTask:
    input: InputFile
    settings: dict[str, Any]  # plain (picklable) scoring config: see scoring_settings
    settings_key: str


@dataclass
class WorkerState:
    """What a worker builds once: config objects, the available scorers (in config order), the
    learned cut detector when one is asked for and can run, and lines to tell the user."""

    prefilter: Any
    cuts: Any
    scorers: list[Any]
    unavailable: dict[str, str] = field(default_factory=dict)
    learned: Any = None
    notes: list[str] = field(default_factory=list)

    def detector(self, fps: float) -> Callable[[np.ndarray], list[Any]]:
        """The transition detector ``cuts.detector`` names, for frames at ``fps``."""
        from data_curation.cuts import detect_transitions
        from data_curation.learned_cuts import combine

        cfg = self.cuts

        def cascade(frames: np.ndarray) -> list[Any]:
            return detect_transitions(frames, fps, cfg)

        if self.learned is None:
            return cascade
        if cfg.detector == "transnetv2":
            return self.learned
        return lambda frames: combine(cascade(frames), self.learned(frames))



def stills_request(scorers: list[Any]) -> StillsRequest | None:
    """One stills request covering every scorer's: the largest short side, the shortest interval."""
    asked = [r for r in (getattr(s, "stills", None) for s in scorers) if r is not None]
    if not asked:
        return None
    return StillsRequest(max(r.short_side for r in asked), min(r.every_s for r in asked))


def scoring_settings(cfg: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The part of the run config that decides the records, and its hash (records made under
    other settings are recomputed on resume); plus ``decode_timeout_s``, which is not hashed."""
    settings = {k: cfg.get(k) for k in ("analysis_short_side", "prefilter", "cuts", "clips", "scorers")}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    settings["decode_timeout_s"] = cfg.get("decode_timeout_s", DEFAULT_DECODE_TIMEOUT_S)
    return settings, key


def _instantiate(node: Any) -> Any:
    if isinstance(node, dict) and "_target_" in node:
        from hydra.utils import instantiate

        return instantiate(node, _convert_="all")
    return node


def worker_state(settings: dict[str, Any], key: str) -> WorkerState:
    """Build (or reuse from this process's cache) the prefilter/cut configs and the scorers."""
    state = _STATE_CACHE.get(key)
    if state is not None:
        return state
    scorers, unavailable = [], {}
    for name, node in (settings.get("scorers") or {}).items():
        if node is None:
            continue
        scorer = _instantiate(node)
        if getattr(scorer, "available", True):
            scorers.append(scorer)
        else:
            unavailable[getattr(scorer, "name", name)] = str(getattr(scorer, "unavailable_reason", "unavailable"))
    state = WorkerState(_instantiate(settings.get("prefilter")), _instantiate(settings.get("cuts")), scorers, unavailable)
    detector = getattr(state.cuts, "detector", "cascade")
    if detector != "cascade":
        from data_curation.learned_cuts import TransNetDetector, unavailable_reason

        reason = unavailable_reason()
        if reason:
            state.notes.append(f"cuts.detector={detector}: {reason}; the cascade finds the transitions instead")
        else:
            state.learned = TransNetDetector(state.cuts.learned_device, state.cuts.learned_threshold)
    if len(_STATE_CACHE) >= _STATE_CACHE_SIZE:
        _STATE_CACHE.clear()
    _STATE_CACHE[key] = state
    return state


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (records are JSON)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _thumb(frame: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY])
    return buf.tobytes() if ok else b""


class _ScorerFailed(Exception):
    pass


def _score_clip(clip: Clip, scorers: list[Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "clip_index": clip.index, "start_frame": clip.span.start, "end_frame": clip.span.end,
        "start_s": clip.start_s, "end_s": clip.end_s, "fps": clip.fps,
        "num_frames": clip.span.num_frames, "caption": clip.caption,
    }
    for scorer in scorers:
        try:
            scores = scorer.score(clip)
        except Exception as err:  # noqa: BLE001 - any scorer failure is this input's error row
            raise _ScorerFailed(f"scorer {scorer.name!r} failed on clip {clip.index}: "
                                f"{type(err).__name__}: {err}") from err
        for key, value in scores.items():
            if key in _RESERVED:
                raise _ScorerFailed(f"scorer {scorer.name!r} returned the reserved column {key!r}")
            row[key] = _plain(value)
        if scores.get("caption") is not None:  # a captioner's caption is what later scorers (CLIP) compare with
            clip.caption = str(scores["caption"])
    return row


def _curate_one(inp: InputFile, settings: dict[str, Any], state: WorkerState,
                video: dict[str, Any], clips: list[dict[str, Any]], thumbs: dict[str, bytes]) -> None:
    from data_curation.analysis import Analysis, analyse_stream
    from data_curation.clip_spans import ClipCutter, clip_frame_limits
    from data_curation.frame_stream import call_with_timeout, stream_frames
    from data_curation.probe import prefilter, probe_video

    timeout = settings.get("decode_timeout_s", DEFAULT_DECODE_TIMEOUT_S)
    info = call_with_timeout(lambda: probe_video(inp.path), timeout, f"probing '{inp.path}'")
    video.update(info.as_row())
    if state.prefilter is not None:
        reason = prefilter(info, state.prefilter)
        if reason:
            video["dropped_by"] = str(reason)
            return
    fps = float(info.fps)
    if not fps > 0:
        raise CurationError("decode_error", f"'{inp.path}': the container gives no frame rate")
    clip_cfg = settings.get("clips") or {}
    min_s, max_s = clip_cfg.get("min_seconds", 0.0), clip_cfg.get("max_seconds", None)
    cutter = ClipCutter(*clip_frame_limits(fps, min_s, max_s), clip_cfg.get("margin_frames", 0))
    batches = stream_frames(inp.path, settings["analysis_short_side"], fps, stills=stills_request(state.scorers),
                            expected_frames=info.num_frames, timeout_s=timeout)
    found = Analysis([])
    vid = inp.video_id
    for index, (span, frames, stills) in enumerate(analyse_stream(batches, state.detector(fps), cutter, result=found)):
        clip = Clip(vid, index, inp.source, span, fps, frames, inp.caption, stills=stills)
        clips.append(_score_clip(clip, state.scorers))
        thumbs[clip_id(vid, index)] = _thumb(frames[len(frames) // 2])
    video.update(decoded_frames=int(found.num_frames), num_clips=len(clips),
                 transitions=[[int(t.start), int(t.end), str(t.kind), str(t.found_by)] for t in found.transitions])
    if not clips:
        video["dropped_by"] = "no_clips"


def _last_line(err: BaseException) -> str:
    lines = [ln for ln in traceback.format_exception_only(type(err), err) if ln.strip()]
    return " ".join(lines[-1].split()) if lines else type(err).__name__


def new_record(inp: InputFile, settings_key: str) -> dict[str, Any]:
    return {"version": RECORD_VERSION, "video_id": inp.video_id, "source": inp.source, "stamp": inp.stamp,
            "caption": inp.caption, "config_key": settings_key, "video": {}, "clips": []}


def set_error(record: dict[str, Any], code: str, message: str) -> dict[str, Any]:
    """Turn ``record`` into an error record (no clips)."""
    record["clips"] = []
    record["video"].update(error_code=code, error_message=message)
    return record


def score_input(task: ScoreTask) -> dict[str, Any]:
    """Engine task: curate one input; returns ``{"record": ..., "thumbs": {clip_id: jpeg}}``."""
    record = new_record(task.input, task.settings_key)
    thumbs: dict[str, bytes] = {}
    try:
        state = worker_state(task.settings, task.settings_key)
        _curate_one(task.input, task.settings, state, record["video"], record["clips"], thumbs)
    except CurationError as err:
        set_error(record, err.code, err.message)
        thumbs = {}
    except _ScorerFailed as err:
        set_error(record, "scorer_error", str(err))
        thumbs = {}
    except Exception as err:  # noqa: BLE001 - a bad input must never end the run
        set_error(record, "internal_error", _last_line(err))
        thumbs = {}
    return {"record": record, "thumbs": thumbs}
