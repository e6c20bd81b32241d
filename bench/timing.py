"""Measuring helpers for the benchmarks: timed call spans and peak memory (CUDA or the process's RSS)."""

from __future__ import annotations

import gc
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch


class Spans:
    """Start / end times of the calls of one function (device synchronised at both ends)."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync, self.starts, self.ends = sync, [], []

    def begin(self, *_: Any) -> None:
        self.sync()
        self.starts.append(time.perf_counter())

    def end(self, *_: Any) -> None:
        self.sync()
        self.ends.append(time.perf_counter())

    def reset(self) -> None:
        self.starts.clear()
        self.ends.clear()

    @property
    def seconds(self) -> float | None:
        return self.ends[-1] - self.starts[0] if self.ends else None

    def hook_module(self, module: torch.nn.Module) -> None:
        module.register_forward_pre_hook(self.begin)
        module.register_forward_hook(self.end)

    def wrap_method(self, owner: object, name: str) -> None:
        """Shadow ``owner.name`` by a timed call of the original bound method."""
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            self.begin()
            try:
                return original(*args, **kwargs)
            finally:
                self.end()

        setattr(owner, name, timed)


class PeakMemory:
    """CUDA: peak allocated bytes. CPU: the process's resident-set high-water mark (``VmHWM``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.note = ""

    def reset(self) -> int | None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        try:  # "5" resets the peak RSS to the current RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.note = "VmHWM could not be reset: the peak covers the build and warm-up too"
        return self._status("VmRSS")

    def peak(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return self._status("VmHWM")

    @staticmethod
    def _status(key: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None


def write_report(report: dict, out: str | None, default: Path) -> Path:
    """Write a benchmark's JSON report to ``out`` (or ``default``) and say where."""
    path = Path(out) if out else default
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {path}")
    return path


def environment(device: torch.device) -> dict:
    """What a benchmark record says about the machine and library versions."""
    import diffusers

    env = {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
           "cpu_threads": torch.get_num_threads(), "machine": platform.machine(), "cpus": os.cpu_count()}
    if device.type == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
