"""MaskedOptim's client core: masked label optimisation on a noisy client (torch only, no Flower).

After the warm-up (fidelity §2), the server splits the clients into clean and noisy ones from their
per-class loss vectors (§2.3, computed here by `per_class_loss`). A noisy client then trains
with PENCIL-style end-to-end label correction (§3), as the authors'
`LocalUpdateMaskedOptim.train_stage2`:

- every sample has learnable label logits ``Ytil`` (§3.1), initialised to ``K * onehot(observed)``
  (`init_label_logits`) and kept by the client across rounds (never uploaded);
- the network learns from the soft labels ``y_d = softmax(Ytil)`` through
  ``L = L_c / C + alpha * L_o + beta * L_e / C`` (§3.2, `masked_optim_loss`): ``L_c`` is
  KL(p || y_d), ``L_o`` pulls ``y_d`` back towards the observed label, ``L_e`` is the prediction
  entropy. The "mask" keeps, per batch, the ``floor(tau * B)`` samples with the smallest plain CE
  w.r.t. the observed label (`small_loss_mask`) and by default applies to ``L_o`` only, so
  probably-mislabelled samples only drift towards the model's prediction;
- label logits take plain gradient steps of size eta = 1000, gathered over an epoch and applied
  once per epoch (§3.3);
- at the end of a round the label distribution is averaged with the final model's soft
  prediction and rescaled by K (§3.6), and the uploaded model is pre-merged with the received
  global model: ``zeta * local + (1 - zeta) * global`` with zeta = 0.8 (§3.7).

`masked_train_locally` runs one such round (§3.5). Choices and departures from the authors' code
are commented where they are made (search for "Departure" / "Choice").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from client_app.training import batch_indices, local_optimiser
from common.acceleration import DeviceOptions
from common.protocol import LocalTraining, MaskedSettings, parse_masked_terms
from data.client_data import ClientData
from data.transforms import InputPipeline


def init_label_logits(
    observed_labels: torch.Tensor, num_classes: int, scale: float = 10.0
) -> torch.Tensor:
    """float32 [n, C]: zeros with `scale` (K) at each observed label (fidelity §3.1).

    On the labels' device. With K = 10 and C = 10, softmax gives 0.99959 at the label.
    """
    n = int(observed_labels.shape[0])
    logits = torch.zeros(n, num_classes, dtype=torch.float32, device=observed_labels.device)
    logits[torch.arange(n, device=observed_labels.device), observed_labels] = float(scale)
    return logits


def small_loss_mask(
    logits: torch.Tensor, observed: torch.Tensor, keep_ratio: float
) -> torch.Tensor:
    """float [B]: ones at the floor(keep_ratio * B) samples with the smallest CE, zeros elsewhere.

    Spec §3.2 item 1: plain CE with the observed labels, over the whole batch (not per class),
    `torch.topk(largest=False)` as the authors; ties are broken by topk. No gradient flows.
    """
    with torch.no_grad():
        losses = F.cross_entropy(logits.detach().float(), observed, reduction="none")
        batch = losses.shape[0]
        # int() of the product, as the authors' `int(0.8 * B)` (floor for non-negative values).
        keep = int(keep_ratio * batch)
        mask = torch.zeros(batch, dtype=torch.float32, device=logits.device)
        if keep > 0:
            mask[torch.topk(losses, keep, largest=False).indices] = 1.0
    return mask


def _loss_terms(
    logits: torch.Tensor,
    label_logits: torch.Tensor,
    observed: torch.Tensor,
    mask: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    masked: frozenset[str],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, L_c, L_o, L_e) as tensors: no device sync, for the training loop."""
    # Choice: the loss is computed in fp32 even when the forward ran under fp16 autocast (the
    # authors take softmax of the fp16 logits, giving fp16 probabilities; fidelity §3.4).
    # log_softmax instead of log(softmax) for stability; the value and gradients are theirs.
    log_p = F.log_softmax(logits.float(), dim=1)
    p = log_p.exp()
    log_y = F.log_softmax(label_logits.float(), dim=1)
    batch, num_classes = logits.shape
    per_sample = {
        "class": (p * (log_p - log_y)).sum(dim=1),  # KL(p_i || y_d,i)
        "compat": -log_y.gather(1, observed.view(-1, 1)).squeeze(1),  # -log y_d,i[obs_i]
        "entropy": -(p * log_p).sum(dim=1),  # H(p_i)
    }
    # Every term is divided by B, masked or not (the authors' mean over the batch of m_i * l_i).
    terms = {
        name: (values * mask).sum() / batch if name in masked else values.sum() / batch
        for name, values in per_sample.items()
    }
    total = (
        terms["class"] / num_classes
        + alpha * terms["compat"]
        + beta * terms["entropy"] / (num_classes)
    )
    return total, terms["class"], terms["compat"], terms["entropy"]


def masked_optim_loss(
    logits: torch.Tensor,
    label_logits: torch.Tensor,
    observed: torch.Tensor,
    mask: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    masked_terms: str | Iterable[str] = "compat",
) -> tuple[torch.Tensor, dict[str, float]]:
    """The noisy-client loss of fidelity §3.2: ``L_c / C + alpha * L_o + beta * L_e / C``.

    p = softmax(logits), y_d = softmax(label_logits);
    L_c = (1/B) sum_i KL(p_i || y_d,i), L_o = -(1/B) sum_i m_i log y_d,i[observed_i] (divided by B,
    not by sum m), L_e = (1/B) sum_i H(p_i). The mask multiplies the terms named in
    `masked_terms` ("compat" = L_o only, as the authors; "class" = L_c, "entropy" = L_e).
    Returns the total (differentiable w.r.t. both logits and label_logits) and the three parts as
    floats (this syncs the device; the training loop uses the tensor version).
    """
    masked = (
        parse_masked_terms(masked_terms)
        if isinstance(masked_terms, str)
        else parse_masked_terms(",".join(masked_terms))
    )
    total, l_c, l_o, l_e = _loss_terms(
        logits, label_logits, observed, mask, alpha=alpha, beta=beta, masked=masked
    )
    parts = {"class": l_c, "compat": l_o, "entropy": l_e}
    return total, {name: float(value.detach()) for name, value in parts.items()}


def merge_labels(
    label_logits: torch.Tensor, predictions: torch.Tensor, scale: float, min_confidence: float = 0.0
) -> torch.Tensor:
    """End-of-round label merge (fidelity §3.6): ``K * (softmax(Ytil) + P) / 2``, in [0, K].

    `min_confidence` > 0 (run-config `label-merge-confidence`, issue 22; not the authors'):
    a sample whose prediction's top probability is below it keeps ``K * softmax(Ytil)``, its
    label distribution without the prediction. A weak model's predictions are wrong about half
    the time on the CPU paper preset, and merging them in lowered the flagged clients' label
    accuracy (74.7 -> 70.1 %, docs/results.md). [n, C] float32 in, [n, C] out."""
    labels = F.softmax(label_logits, dim=1)
    merged = (labels + predictions) / 2
    if min_confidence > 0:
        confident = predictions.max(dim=1, keepdim=True).values >= min_confidence
        merged = torch.where(confident, merged, labels)
    return merged * scale


def relabel_unlikely(
    observed: torch.Tensor, probabilities: torch.Tensor, below: float
) -> torch.Tensor:
    """The labels a flagged client trains with under `noisy-training=la-distill` with
    `distill-relabel-below` (issue 22; not the authors'): the model's prediction (argmax of
    `probabilities`) where the model gives the observed label a probability below `below`, the
    observed label elsewhere. `observed` int64 [n], `probabilities` float [n, C] (rows sum to 1);
    returns int64 [n] on their device. Why a gate on the given label's probability rather than
    on the prediction's confidence: with the weak warm-up model of the CPU paper preset
    (45-54 % test accuracy) the observed label of a truly noisy client's sample given less than
    5 % is right for about 1 in 5 samples and the prediction for 2 in 5, so swapping them raised
    those clients' label accuracy from 75 to 77-79 % (3 seeds, rounds 30-90,
    bench/detection_timing.py's queries), while merging with confident predictions lowered it
    (docs/maskedoptim.md)."""
    given = probabilities.gather(1, observed.view(-1, 1)).view(-1)
    return torch.where(given < below, probabilities.argmax(dim=1), observed)


def confident_rows(logits: torch.Tensor, min_confidence: float) -> torch.Tensor:
    """float32 [B, 1]: 1 where the batch's prediction (softmax of `logits` [B, C]) has a top
    probability of at least `min_confidence`, else 0. Run-config `label-step-confidence`
    (issue 22; not the authors'): a sample's label logits take their gradient step only where
    the model is that sure, so a weak model leaves the observed labels alone. On the CPU paper
    preset the label steps alone lowered the flagged clients' label accuracy (71.9 -> 70.3 %
    with the merge gated at 0.7; docs/maskedoptim.md)."""
    top = F.softmax(logits.detach().float(), dim=1).max(dim=1).values
    return (top >= min_confidence).to(torch.float32).unsqueeze(1)


def premerge_state(
    local: dict[str, torch.Tensor], received: dict[str, torch.Tensor], local_weight: float
) -> dict[str, torch.Tensor]:
    """``zeta * local + (1 - zeta) * received`` for every state entry (fidelity §3.7).

    Floating tensors keep their dtype. Integer tensors (BatchNorm's num_batches_tracked) are
    interpolated the way torch promotes ``python float * int64 tensor`` (to the default float
    dtype, as in the authors' code) and cast back, which truncates toward zero, as the authors'
    `load_state_dict` does when it copies the float into the int64 buffer.
    """
    merged = {}
    for name, value in local.items():
        mixed = local_weight * value + (1.0 - local_weight) * received[name]
        merged[name] = mixed if value.is_floating_point() else mixed.to(value.dtype)
    return merged


@dataclass
class MaskedRoundResult:
    mean_loss: float  # mean of the minimised loss over the steps taken
    num_steps: int
    label_logits: torch.Tensor  # the merged label logits to keep for the next round (same device)
    upload_state: dict[str, torch.Tensor]  # pre-merged state dict to send (model.state_dict() keys)
    before_merge_labels: torch.Tensor  # argmax of Ytil after the E epochs, before the merge


def _autocast(enabled: bool, device: torch.device):
    """fp16 autocast for the authors' stage-2 forward (fidelity §3.4, B5); only on CUDA."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    # Choice: on other devices the flag is ignored (fp16 autocast is a CUDA feature).
    return contextlib.nullcontext()


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _soft_predictions(
    model: nn.Module,
    data: ClientData,
    pipeline: InputPipeline,
    batch_size: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """softmax predictions [n, C] (fp32) over all local samples, as the authors' merge pass.

    Spec §3.5 / B6, reproduced: no grad, the model still in TRAIN mode (BatchNorm uses batch
    statistics and updates its running statistics, which the caller restores), shuffled batches
    of B with the last partial batch kept, and the training augmentation. Choice: fp32 forward
    even when training used fp16 autocast (the authors' autocast line is commented out here).
    """
    device = data.inputs.device
    n = len(data)
    predictions = torch.empty(n, data.num_classes, dtype=torch.float32, device=device)
    order = torch.randperm(n, generator=generator).to(device)
    with torch.no_grad():
        for idx in order.split(batch_size):
            logits = model(pipeline.train_batch(data.inputs[idx], generator))
            predictions[idx] = F.softmax(logits.float(), dim=1)
    return predictions


def masked_train_locally(
    model: nn.Module,
    data: ClientData,
    pipeline: InputPipeline,
    settings: LocalTraining,
    masked: MaskedSettings,
    label_logits: torch.Tensor,
    generator: torch.Generator,
    options: DeviceOptions = DeviceOptions(),  # noqa: B008 (frozen)
) -> MaskedRoundResult:
    """One stage-2 round of a noisy client (fidelity §3.5), from the received global model.

    `model` must hold the received global weights on entry. Only settings.local_epochs,
    batch_size, lr, momentum and weight_decay are used (local_loss and proximal_mu do not apply
    to noisy clients: the loss is §3.2's). `label_logits` ([n, C], the client's Ytil) is not
    modified in place; the merged logits for the next round come back in the result, on the
    same device.
    The observed labels are never changed (fidelity §3.6): the mask and L_o always use them.

    On return the model holds w_final, the locally trained weights AND buffers exactly as they
    were after the last SGD step (the soft-prediction pass's BatchNorm running-statistics updates
    are undone), in train mode. The pre-merged weights are only in `upload_state`.
    """
    device = data.inputs.device
    n, num_classes = len(data), data.num_classes
    if tuple(label_logits.shape) != (n, num_classes):
        raise ValueError(
            f"label_logits has shape {tuple(label_logits.shape)}, expected ({n}, {num_classes})"
        )
    masked_set = parse_masked_terms(masked.masked_terms)
    received = _state_copy(model)  # w0, kept for the pre-merge
    # Working copy on the data's device (the authors keep Ytil on the CPU and move rows to the
    # GPU per batch; same arithmetic, fewer transfers).
    ytil = label_logits.detach().to(device=device, dtype=torch.float32).clone()

    model.train()
    optimiser = local_optimiser(model, settings)
    loss_sum = torch.zeros((), device=device)
    steps = 0
    for _ in range(settings.local_epochs):
        grad_buffer = torch.zeros_like(ytil)  # G: rows not visited this epoch stay 0
        for idx in batch_indices(n, settings.batch_size, generator, device):
            inputs = options.prepare_inputs(pipeline.train_batch(data.inputs[idx], generator))
            observed = data.observed_labels[idx]
            # masked-fp16 is the authors' own switch; otherwise the run's precision applies
            forward = _autocast(True, device) if masked.masked_fp16 else options.autocast(device)
            with forward:
                logits = model(inputs)
            # All batches of an epoch read the epoch-start Ytil (the step comes after the epoch).
            rows = ytil[idx].detach().clone().requires_grad_(True)
            mask = small_loss_mask(logits, observed, masked.mask_keep)
            loss, _, _, _ = _loss_terms(
                logits,
                rows,
                observed,
                mask,
                alpha=masked.compat_weight,
                beta=masked.entropy_weight,
                masked=masked_set,
            )
            optimiser.zero_grad(set_to_none=True)
            # No GradScaler with autocast, as the authors (fidelity §3.4, B5: fidelity mode).
            loss.backward()
            step = rows.grad
            if masked.label_step_confidence > 0:  # issue 22, not the authors': see below
                step = step * confident_rows(logits, masked.label_step_confidence)
            grad_buffer[idx] = step  # each sample at most once per epoch
            optimiser.step()
            loss_sum += loss.detach()  # stays on the device: no sync per step
            steps += 1
        # Plain gradient descent on the label logits, once per epoch (fidelity §3.3).
        ytil = ytil - masked.label_lr * grad_buffer

    final_state = _state_copy(model)  # w_final, taken BEFORE the soft-prediction pass (B6)
    before_merge = ytil.argmax(dim=1)
    predictions = _soft_predictions(model, data, pipeline, settings.batch_size, generator)
    # Choice: undo the pass's BatchNorm running-stat updates so the model is exactly w_final.
    model.load_state_dict(final_state)
    merged = merge_labels(ytil, predictions, masked.label_scale, masked.label_merge_confidence)
    upload = premerge_state(final_state, received, masked.premerge_local_weight)
    return MaskedRoundResult(
        mean_loss=float(loss_sum) / max(steps, 1),
        num_steps=steps,
        label_logits=merged.to(label_logits.device),
        upload_state=upload,
        before_merge_labels=before_merge.to(label_logits.device),
    )


def per_class_loss(
    model: nn.Module,
    data: ClientData,
    pipeline: InputPipeline,
    generator: torch.Generator,
    batch_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The client's per-class mean loss vector for noisy-client detection (fidelity §2.3).

    As the authors' GMM block, computed by the client (§11.2 row 2): model in eval mode, no grad,
    the TRAINING transform (augmentation on; its randomness from `generator`), plain per-sample
    CE with the observed labels (no logit adjustment), batches of `batch_size` in the client's
    sample order (the authors' loader does not shuffle). Returns, on the CPU, float32 losses [C]
    (the mean over the client's samples of each observed class, NaN for classes it does not hold),
    the bool [C] mask of the classes it holds, and int64 [C] counts of the samples of each
    observed class whose observed label is the model's prediction (the agreement that
    `strong-model-agreement` reads; issue 22, not the authors').

    Choice: the model's train/eval mode is restored on return (the authors leave it in eval mode;
    this makes no difference to the result).
    """
    device = data.inputs.device
    num_classes = data.num_classes
    was_training = model.training
    model.eval()
    sums = torch.zeros(num_classes, dtype=torch.float32, device=device)
    agree = torch.zeros(num_classes, dtype=torch.int64, device=device)
    try:
        with torch.no_grad():
            for idx in torch.arange(len(data), device=device).split(batch_size):
                logits = model(pipeline.train_batch(data.inputs[idx], generator))
                observed = data.observed_labels[idx]
                losses = F.cross_entropy(logits.float(), observed, reduction="none")
                sums.index_add_(0, observed, losses)
                agree += torch.bincount(
                    observed[logits.argmax(dim=1) == observed], minlength=num_classes
                )
    finally:
        model.train(was_training)
    counts = torch.bincount(data.observed_labels, minlength=num_classes).to(sums)
    present = counts > 0
    means = torch.where(present, sums / counts.clamp_min(1.0), torch.full_like(sums, float("nan")))
    return means.cpu(), present.cpu(), agree.cpu()
