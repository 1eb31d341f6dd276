"""Local training loops (torch only: no Flower, so benchmarks can run them without Ray).

A client's data are tensors on the training device (data.client_data.ClientData); each batch is
indexed from them and augmented on the device (data.transforms). The loop follows the authors'
`train_stage1` / FedAvg client (fidelity §2.1, §5.2): a fresh SGD optimiser every round, E epochs,
shuffled batches of B with the last partial batch dropped.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.acceleration import DeviceOptions
from common.protocol import LocalTraining
from data.client_data import ClientData
from data.transforms import InputPipeline

# "la-distill" is FedNoRo's noisy-client loss; "joint-optim" and "selfie" are computed by the
# client's per-sample label state (client_app.joint_optim, client_app.selfie); the others are
# run-config `local-loss` values.
PER_SAMPLE_LOSSES = ("joint-optim", "selfie")
LOSSES = ("ce", "logit-adjusted", "symmetric-ce", "la-distill", *PER_SAMPLE_LOSSES)


class SampleLabels(Protocol):
    """A client's per-sample label state that computes its own batch loss (Joint Optimization's
    soft labels, SELFIE's prediction history)."""

    def batch_loss(
        self,
        idx: torch.Tensor,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        forward: Callable[[torch.Tensor], torch.Tensor],
        settings: LocalTraining,
    ) -> torch.Tensor:
        """The loss of the batch of samples `idx` (observed labels `targets`); `forward` gives
        float32 logits of any inputs."""
        ...

    def end_epoch(self) -> None: ...


@dataclass(frozen=True)
class TrainStats:
    mean_loss: float  # mean of the minimised loss over the steps taken
    num_steps: int


def logit_adjusted_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, log_prior: torch.Tensor, tau: float = 1.0
) -> torch.Tensor:
    """CE on logits shifted by tau * log(class prior) (Menon et al.; fidelity §2.1, tau = 1).

    Classes absent from the client have prior 0 and log-prior -inf, as in the authors' code:
    their probability becomes 0, which is harmless because no target is an absent class.
    """
    return F.cross_entropy(logits + tau * log_prior, targets)


def symmetric_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.1, beta: float = 1.0
) -> torch.Tensor:
    """alpha * CE + beta * reverse CE (Wang et al., ICCV 2019, as FNBench computes it).

    Reverse CE = -sum_c p_c log q_c with p the prediction clamped to [1e-7, 1] and q the one-hot
    label clamped to [1e-4, 1], so log 0 becomes log 1e-4 (the paper's A): per sample it is
    -log(1e-4) * sum_{c != y} max(p_c, 1e-7)."""
    probabilities = F.softmax(logits, dim=1).clamp(min=1e-7, max=1.0)
    one_hot = F.one_hot(targets, logits.shape[1]).to(logits.dtype).clamp(min=1e-4, max=1.0)
    reverse = -(probabilities * torch.log(one_hot)).sum(dim=1).mean()
    return alpha * F.cross_entropy(logits, targets) + beta * reverse


def logit_adjusted_distillation(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    log_prior: torch.Tensor,
    kd_weight: float,
    temperature: float = 0.8,
) -> torch.Tensor:
    """FedNoRo's noisy-client loss (Wu et al., IJCAI 2023; FNBench `LA_KD`):
    w * KL(softmax(teacher / T) || softmax(z + log prior)) + (1 - w) * logit-adjusted CE.

    Only the teacher is tempered (no T^2 factor); the student's log-probabilities of classes the
    client does not have (log prior -inf) count as 0 in the KL term, as in the authors' code."""
    log_student = F.log_softmax(logits + log_prior, dim=1)
    finite = torch.where(torch.isfinite(log_student), log_student, torch.zeros_like(log_student))
    teacher = F.softmax(teacher_logits / temperature, dim=1)
    distillation = F.kl_div(finite, teacher, reduction="batchmean")
    return kd_weight * distillation + (1 - kd_weight) * F.nll_loss(finite, targets)


def proximal_term(model: nn.Module, anchor: list[torch.Tensor]) -> torch.Tensor:
    """FedProx's sum of squared distances ||w - w_global||^2 over all parameters."""
    return sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))


def batch_indices(
    num_samples: int, batch_size: int, generator: torch.Generator, device: torch.device
) -> list[torch.Tensor]:
    """One epoch of shuffled full batches (drop_last=True), as index tensors on `device`."""
    order = torch.randperm(num_samples, generator=generator).to(device)
    num_batches = num_samples // batch_size
    return list(order[: num_batches * batch_size].view(num_batches, batch_size))


# On the CPU, PyTorch's fused SGD step pays off for large models only. Measured on the idle
# 2-core dev machine by bench/optimiser_step.py, one training step (forward, backward, SGD with
# momentum 0.9 and weight decay 5e-4) on a batch of 64: fastText with a 30,000-word vocabulary
# (7.7M values, most in the embedding) 31.8 -> 6.8 ms; LeNet (62k values) 5.6 -> 6.0 ms. The
# same update up to float rounding, so not bit-identical with the unfused step.
FUSED_CPU_MIN_PARAMETERS = 1_000_000


def local_optimiser(model: nn.Module, settings: LocalTraining) -> torch.optim.SGD:
    """A fresh SGD optimiser, as the authors create one every round (no momentum carried over);
    PyTorch's fused step for a model on the CPU with at least FUSED_CPU_MIN_PARAMETERS values."""
    parameters = list(model.parameters())
    on_cpu = all(p.device.type == "cpu" for p in parameters)
    fused = on_cpu and sum(p.numel() for p in parameters) >= FUSED_CPU_MIN_PARAMETERS
    return torch.optim.SGD(
        parameters,
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        fused=fused or None,
    )


# The losses a CUDA graph can record: a fixed sequence of kernels per batch, with no host-side
# decision (mixup's Beta draw, a per-sample label state) and no second model (la-distill's teacher).
CAPTURABLE_LOSSES = ("ce", "logit-adjusted", "symmetric-ce")


def can_capture(
    settings: LocalTraining, options: DeviceOptions, inputs: torch.Tensor, labels
) -> bool:
    """Whether train_locally records its step as a CUDA graph (`cuda-graphs`, common.acceleration):
    on a CUDA device, for 4-D image batches and the plain step (a CAPTURABLE_LOSSES loss, gradient
    clipping allowed; no mixup, per-sample labels or FedProx term). Else the eager loop runs."""
    return (
        options.cuda_graphs
        and inputs.device.type == "cuda"
        and inputs.dim() == 4
        and labels is None
        and settings.local_loss in CAPTURABLE_LOSSES
        and settings.mixup_alpha == 0
        and settings.proximal_mu == 0
        and settings.proximal_norm == 0
    )


class CapturedStep:
    """train_locally's plain step (zero grads, forward under autocast, loss, backward, optional
    gradient clipping, SGD step, loss accumulation) recorded once as a CUDA graph and replayed for
    every batch, following PyTorch's "whole network capture" recipe (torch.cuda.graphs docs):
    the first WARMUP_STEPS batches run eagerly on a side stream (they are real training steps,
    and they create the momentum buffers and let cuDNN choose its algorithms), then the step is
    captured and replayed. Batches are copied into static `inputs` / `targets` tensors.

    One step is kept per model (`captured_step`) and reused by later calls with the same settings
    and batch shape, since the model's tensors keep their storage (load_weights copies in place).
    Each call starts with `begin`, which zeroes the momentum buffers: SGD's first step with a
    zero buffer (dampening 0) gives the same update as a fresh optimiser's, so the authors' fresh
    optimiser per round is kept. Why our own: torch.compile's "reduce-overhead" mode also
    replays CUDA graphs, but it needs Triton and compiles once per process and model; recording
    the eager step needs neither.
    """

    WARMUP_STEPS = 3

    def __init__(
        self,
        model: nn.Module,
        settings: LocalTraining,
        options: DeviceOptions,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        num_classes: int,
    ) -> None:
        self.settings = settings
        self.options = options
        self.optimiser = local_optimiser(model, settings)
        self.parameters = [p for p in model.parameters()]
        device = inputs.device
        self.inputs = torch.empty_like(inputs)  # keeps the batch's memory format
        self.targets = torch.empty_like(targets)
        self.log_prior = torch.zeros(num_classes, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.side = torch.cuda.Stream(device)  # warm-up and recording (not the default stream)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm_steps = 0
        self.key = _step_key(settings, options, inputs, targets, num_classes)

    def begin(self, log_prior: torch.Tensor | None) -> None:
        """Start a client's training: no loss yet, zero momentum, this client's prior."""
        self.loss_sum.zero_()
        for state in self.optimiser.state.values():
            buffer = state.get("momentum_buffer")
            if buffer is not None:
                buffer.zero_()
        if log_prior is not None:
            self.log_prior.copy_(log_prior)

    def _step(self, model: nn.Module) -> None:
        self.optimiser.zero_grad(set_to_none=True)
        with self.options.autocast(self.inputs.device, cache_enabled=False):
            logits = model(self.inputs)
            loss = _batch_loss(
                self.settings, logits.float(), self.targets, self.log_prior, None, self.inputs
            )
        loss.backward()
        if self.settings.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.parameters, self.settings.max_grad_norm)
        self.optimiser.step()
        self.loss_sum.add_(loss.detach())

    def run(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """One training step on this batch."""
        self.inputs.copy_(inputs)
        self.targets.copy_(targets)
        if self.graph is not None:
            self.graph.replay()
            return
        current = torch.cuda.current_stream(inputs.device)
        self.side.wait_stream(current)
        if self.warm_steps < self.WARMUP_STEPS:
            with torch.cuda.stream(self.side):
                self._step(model)
            current.wait_stream(self.side)
            self.warm_steps += 1
            return
        graph = torch.cuda.CUDAGraph()
        # capture_begin, not torch.cuda.graph(): that context synchronises the whole device
        # first, which breaks a recording under way in another thread (8 clients in threads
        # crashed so on the H200, docs/benchmarks.md §6). One recording at a time; thread_local
        # lets the other threads go on launching their own work meanwhile.
        with _RECORDING, torch.cuda.stream(self.side):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                self._step(model)
            finally:
                graph.capture_end()
        current.wait_stream(self.side)
        self.graph = graph
        graph.replay()  # recording ran nothing: this batch's step


def _step_key(settings, options, inputs, targets, num_classes) -> tuple:
    return (settings, options, tuple(inputs.shape), inputs.dtype, inputs.stride(),
            targets.dtype, num_classes)  # fmt: skip


_RECORDING = threading.Lock()
_CAPTURED: weakref.WeakKeyDictionary[nn.Module, CapturedStep] = weakref.WeakKeyDictionary()
_CAPTURED_LOCK = threading.Lock()


def captured_step(
    model: nn.Module,
    settings: LocalTraining,
    options: DeviceOptions,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
) -> CapturedStep:
    """The model's CapturedStep for these settings and batch shape, made anew when they change
    (the old graph is then freed). It holds the model's parameters, not the model, so it goes
    when the model goes."""
    with _CAPTURED_LOCK:
        step = _CAPTURED.get(model)
        if step is None or step.key != _step_key(settings, options, inputs, targets, num_classes):
            step = CapturedStep(model, settings, options, inputs, targets, num_classes)
            _CAPTURED[model] = step
        return step


def train_locally(
    model: nn.Module,
    data: ClientData,
    pipeline: InputPipeline,
    settings: LocalTraining,
    generator: torch.Generator,
    options: DeviceOptions = DeviceOptions(),  # noqa: B008 (frozen)
    labels: SampleLabels | None = None,
) -> TrainStats:
    """Train `model` in place on the client's observed labels for `settings.local_epochs` epochs
    (`options`: precision and memory layout, common.acceleration); with a per-sample loss
    (`joint-optim`, `selfie`), `labels` computes each batch's loss from its own state and is told
    when an epoch ends."""
    if settings.local_loss not in LOSSES:
        allowed = ", ".join(LOSSES)
        raise ValueError(f"unknown local loss {settings.local_loss!r}; allowed: {allowed}")
    if (settings.local_loss in PER_SAMPLE_LOSSES) != (labels is not None):
        raise ValueError(f"the {PER_SAMPLE_LOSSES} losses and a label state go together")
    if settings.mixup_alpha > 0 and settings.local_loss != "ce":
        raise ValueError(f"mixup goes with the 'ce' loss, not {settings.local_loss!r}")
    teacher = None
    if settings.local_loss == "la-distill":  # the received global model, frozen
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
    model.train()
    optimiser = local_optimiser(model, settings)
    adjusted = settings.local_loss in ("logit-adjusted", "la-distill")
    log_prior = torch.log(data.class_prior()) if adjusted else None
    proximal = settings.proximal_mu > 0 or settings.proximal_norm > 0
    anchor = [p.detach().clone() for p in model.parameters()] if proximal else None
    mixing = None
    if settings.mixup_alpha > 0:  # numpy's Beta sampler, seeded from the run's generator
        mixing = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
    device = data.inputs.device
    loss_sum = torch.zeros((), device=device)
    steps = 0
    captured: CapturedStep | None = None
    for _ in range(settings.local_epochs):
        for step, idx in enumerate(
            batch_indices(len(data), settings.batch_size, generator, device)
        ):
            inputs = options.prepare_inputs(pipeline.train_batch(data.inputs[idx], generator))
            targets = data.observed_labels[idx]
            if captured is None and can_capture(settings, options, inputs, labels):
                captured = captured_step(model, settings, options, inputs, targets,
                                         data.num_classes)  # fmt: skip
                captured.begin(log_prior)
            if captured is not None:
                captured.run(model, inputs, targets)
                steps += 1
                continue
            if mixing is not None:
                share = float(mixing.beta(settings.mixup_alpha, settings.mixup_alpha))
                partner = torch.randperm(len(idx), generator=generator).to(device)
                with options.autocast(device):
                    logits = model.mixed_forward(inputs, partner, share)
                logits = logits.float()
                loss = share * F.cross_entropy(logits, targets) + (1 - share) * F.cross_entropy(
                    logits, targets[partner]
                )
            elif labels is not None:

                def forward(batch: torch.Tensor) -> torch.Tensor:
                    with options.autocast(device):
                        return model(batch).float()

                loss = labels.batch_loss(idx, inputs, targets, forward, settings)
            else:
                with options.autocast(device):
                    logits = model(inputs)
                    loss = _batch_loss(
                        settings, logits.float(), targets, log_prior, teacher, inputs
                    )
            if settings.proximal_mu > 0:
                loss = loss + 0.5 * settings.proximal_mu * proximal_term(model, anchor)
            if settings.proximal_norm > 0 and step > 0:  # at w = w_global the norm has no gradient
                loss = loss + settings.proximal_norm * torch.sqrt(proximal_term(model, anchor))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if settings.max_grad_norm > 0:  # the whole model's gradient, as one vector
                nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimiser.step()
            loss_sum += loss.detach()  # stays on the device: no sync per step
            steps += 1
        if labels is not None:
            labels.end_epoch()
    if captured is not None:
        loss_sum = loss_sum + captured.loss_sum
    return TrainStats(mean_loss=float(loss_sum) / max(steps, 1), num_steps=steps)


def _batch_loss(settings, logits, targets, log_prior, teacher, inputs) -> torch.Tensor:
    if settings.local_loss == "ce":
        return F.cross_entropy(logits, targets)
    if settings.local_loss == "logit-adjusted":
        return logit_adjusted_cross_entropy(logits, targets, log_prior)
    if settings.local_loss == "symmetric-ce":
        return symmetric_cross_entropy(logits, targets, settings.sce_alpha, settings.sce_beta)
    with torch.no_grad():
        teacher_logits = teacher(inputs)
    return logit_adjusted_distillation(
        logits, teacher_logits, targets, log_prior, settings.kd_weight, settings.kd_temperature
    )
