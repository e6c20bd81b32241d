"""Test-only: Lightning's ``FSDPStrategy`` accepted with the CPU accelerator (gloo).

PyTorch's FSDP runs on CPU process groups, but Lightning's accelerator connector refuses
``FSDPStrategy`` unless the accelerator is CUDA — by an exact ``type(...) is FSDPStrategy`` check,
which a subclass passes. This lets ``trainer=fsdp`` (auto-wrap per UNet block, activation
checkpointing, full state dicts for ``last.ckpt`` and ``model.safetensors``, resume) run end to
end in a 2-process CPU test. Mixed precision is left out there (bf16 FSDP on CPU is not a use case).
"""

from pytorch_lightning.strategies import FSDPStrategy


class CPUFSDPStrategy(FSDPStrategy):
    """``FSDPStrategy`` unchanged; only its class differs, so it may run on CPU in tests."""
