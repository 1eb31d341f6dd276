"""How the training core uses its device: mixed precision, memory layout, cuDNN autotuning and
pinned host-to-device copies. Torch only; written against the configured device (never a
`.cuda()` literal), so the CPU tests run the same code as a GPU.

- `precision`: "fp32" (default), "bf16" (autocast to bfloat16 for the forward pass, weights and
  optimiser state stay fp32: no loss scaling is needed, bf16 has fp32's exponent range), or
  "fp16" (autocast to float16 without a GradScaler, as the authors' stage-2 code does,
  fidelity §3.4: kept for fidelity; it can underflow gradients). CPU autocast supports bf16.
- `channels_last`: images and convolution weights in NHWC order, which cuDNN's tensor-core
  kernels prefer; a no-op for text and for models without 4-D weights.
- `cudnn_benchmark`: let cuDNN time its algorithms for each new input shape (sets the global
  `torch.backends.cudnn.benchmark`; results may then differ in the last bits between runs).
- `cuda_graphs`: record the plain training step (forward, loss, backward, SGD step) once as a
  CUDA graph and replay it for every batch (client_app.training.CapturedStep). ResNet-18 at
  B = 64 is bound by kernel launches on an H200 (about 6,600 images/s eagerly, docs/benchmarks.md
  §6), which a replay removes. A no-op off CUDA and for steps it cannot record (see there).
docs/benchmarks.md gives each option's measured effect where a GPU was available.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class DeviceOptions:
    """The run config's `precision`, `channels-last` and `cudnn-benchmark` keys."""

    precision: str = "fp32"
    channels_last: bool = False
    cudnn_benchmark: bool = False
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision='{self.precision}' is not known; allowed: {', '.join(PRECISIONS)}"
            )

    @classmethod
    def from_config(cls, config) -> DeviceOptions:
        """From a common.config.RunConfig."""
        return cls(config.precision, config.channels_last, config.cudnn_benchmark,
                   config.cuda_graphs)  # fmt: skip

    def autocast(self, device: torch.device, cache_enabled: bool = True):
        """The forward pass's context: autocast to the chosen dtype, or nothing for fp32.
        `cache_enabled=False` is what a CUDA graph's capture needs (torch.amp's docs)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(
            device_type=device.type,
            dtype=_AUTOCAST_DTYPES[self.precision],
            cache_enabled=cache_enabled,
        )

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """`model` in the chosen memory layout (in place; returns it)."""
        if self.channels_last and any(p.dim() == 4 for p in model.parameters()):
            model.to(memory_format=torch.channels_last)
        return model

    def prepare_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the chosen memory layout (4-D image batches only)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def apply_globals(self) -> None:
        """Process-wide switches (cuDNN autotuning)."""
        torch.backends.cudnn.benchmark = self.cudnn_benchmark


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` (CPU tensors) into `model`'s tensors on its device, keeping each tensor's
    memory layout. To a CUDA device the copies go through pinned host memory without blocking
    (they are ordered before the training that follows on the same stream); elsewhere this is
    load_state_dict's copy. Raises KeyError / RuntimeError on missing keys or shapes, as
    load_state_dict does."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise KeyError(f"state does not fit the model: missing {missing}, unexpected {unexpected}")
    to_cuda = next(iter(own.values())).device.type == "cuda" if own else False
    with torch.no_grad():
        for name, target in own.items():
            source = state[name]
            if to_cuda and source.device.type == "cpu":
                source = source.pin_memory()
            target.copy_(source, non_blocking=to_cuda)
