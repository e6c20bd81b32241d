"""Test-only: ``trainer=fsdp`` (our :class:`~vldm.training.strategies.DiffusionFSDPStrategy`) on CPU (gloo).

PyTorch's FSDP runs on CPU process groups, but two things in the stack assume a GPU:

* Lightning wraps with ``device_id=root_device.index``, ``None`` on CPU, which FSDP rejects; here the
  wrapper gets ``device_id=cpu``. (Lightning's refusal of FSDP without CUDA is an exact
  ``type(...) is FSDPStrategy`` check, which our subclass already passes.)
* torch's full optimizer-state gather (``_optim_utils._allgather_orig_param_states``) gathers every
  state of a flat parameter into one reused buffer and, with ``offload_to_cpu``, keeps ``.cpu()`` of
  views of it: a copy from a GPU, but on CPU the same memory, so ``exp_avg`` would read back as
  ``exp_avg_sq``. Here the full optimizer state is gathered without offloading (torch then clones).

Everything else — auto-wrap per UNet block, activation checkpointing, the frozen encoders left out,
clipping across shards, full state dicts in ``last.ckpt``, resume — is the code a GPU cluster runs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed.fsdp as fsdp
from pytorch_lightning.core.optimizer import LightningOptimizer
from torch import nn

from vldm.training.strategies import DiffusionFSDPStrategy


class CPUFSDPStrategy(DiffusionFSDPStrategy):
    """``DiffusionFSDPStrategy`` with the two CPU adjustments above (tests only)."""

    def _setup_model(self, model: nn.Module) -> nn.Module:
        original = fsdp.FullyShardedDataParallel

        class OnCPU(original):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, device_id: Any = None, **kwargs: Any) -> None:
                super().__init__(*args, device_id=torch.device("cpu") if device_id is None else device_id, **kwargs)

        fsdp.FullyShardedDataParallel = OnCPU  # Lightning imports the name inside _setup_model
        try:
            return super()._setup_model(model)
        finally:
            fsdp.FullyShardedDataParallel = original

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        from torch.distributed.fsdp import (FullOptimStateDictConfig, FullStateDictConfig, OptimStateKeyType,
                                            StateDictType)

        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        FSDP = fsdp.FullyShardedDataParallel
        with FSDP.state_dict_type(self.model, StateDictType.FULL_STATE_DICT,
                                  FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
                                  FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True)):
            state = FSDP.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:  # Lightning's format: parameter ids, as a plain optimizer's state_dict
                state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
        return state
