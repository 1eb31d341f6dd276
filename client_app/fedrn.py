"""FedRN (Kim et al., "FedRN: Exploiting k-Reliable Neighbors Towards Robust Federated
Learning", CIKM 2022) on the client, read from the paper and from FNBench's `fedrn`
(fl_components/update.py, LocalUpdateFedRN). Torch, plus scikit-learn's Gaussian mixture.

After the warm-up, a client receives the global model, its own previous local model and the
local models of its k reliable neighbours (chosen by the server: strategies.fedrn). It
1. fits a two-component Gaussian mixture to the per-sample CE losses of its previous model
   (min-max normalised) and takes each sample's probability of the low-loss component
   (`clean_probability`);
2. fine-tunes each neighbour's head (the last linear layer; the rest frozen) for one pass over
   the samples step 1 deems clean, then takes each neighbour's clean probabilities the same way;
3. averages the probabilities weighted by the normalised reliability scores the server sent
   (`combined_clean`) and trains the global model with CE on the samples whose combined
   probability passes `p-threshold`.
Every round it reports its model's *expertise* (accuracy on its own given labels) and its
*probe output* (the logits of a fixed random input, the same on every client), from which the
server measures reliability and similarity.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.mixture import GaussianMixture

from common.acceleration import DeviceOptions
from common.evaluation import predict_logits
from common.protocol import LocalTraining
from data.client_data import ClientData
from data.transforms import InputPipeline
from models import Classifier


def per_sample_losses(
    model: Classifier,
    data: ClientData,
    pipeline: InputPipeline,
    batch_size: int,
    options: DeviceOptions = DeviceOptions(),  # noqa: B008 (frozen)
) -> np.ndarray:
    """CE of each sample against its given label (eval mode and transform): (n,) float64."""
    with torch.no_grad():
        logits = predict_logits(model, data.inputs, pipeline, batch_size, options)
        losses = F.cross_entropy(logits, data.observed_labels, reduction="none")
    return losses.double().cpu().numpy()


def clean_probability(losses: np.ndarray, seed: int) -> np.ndarray:
    """Each sample's posterior probability of the lower-mean component of a two-component
    Gaussian mixture fitted to the min-max normalised losses (FNBench's fit_gmm: max_iter 100,
    tol 1e-2, reg_covar 5e-4; seeded here). losses: (n,) float; returns (n,) float64 in [0, 1].
    All-equal losses carry no signal: every sample gets 1."""
    spread = float(losses.max() - losses.min())
    if spread == 0.0:
        return np.ones(len(losses))
    values = ((losses - losses.min()) / spread).reshape(-1, 1)
    gmm = GaussianMixture(
        n_components=2, max_iter=100, tol=1e-2, reg_covar=5e-4, random_state=seed
    ).fit(values)
    return gmm.predict_proba(values)[:, int(np.argmin(gmm.means_.ravel()))]


def combined_clean(
    probabilities: list[np.ndarray], scores: list[float], threshold: float, minimum: int
) -> np.ndarray:
    """Indices (int64, increasing) of the samples whose score-weighted mean clean probability
    (weights: the scores divided by their sum) exceeds `threshold`. Fewer than `minimum` (one
    batch; FNBench, without drop_last, would train on a partial batch): the `minimum` most
    probably clean. Raises ValueError on mismatched lengths or a non-positive score sum."""
    if len(probabilities) != len(scores) or not probabilities:
        raise ValueError(f"{len(probabilities)} probability vectors for {len(scores)} scores")
    total = float(sum(scores))
    if total <= 0:
        raise ValueError(f"the reliability scores sum to {total}; they must sum to > 0")
    final = sum(p * (s / total) for p, s in zip(probabilities, scores, strict=True))
    chosen = np.flatnonzero(final > threshold)
    if len(chosen) < minimum:
        chosen = np.sort(np.argsort(-final, kind="stable")[:minimum])
    return chosen.astype(np.int64)


def subset(data: ClientData, rows: np.ndarray) -> ClientData:
    """The client's data restricted to `rows` (positions in it)."""
    index = torch.as_tensor(rows, device=data.inputs.device)
    return dataclasses.replace(
        data,
        indices=data.indices[rows],
        inputs=data.inputs[index],
        observed_labels=data.observed_labels[index],
        clean_labels=data.clean_labels[index],
        sample_ids=None if data.sample_ids is None else data.sample_ids[rows],
    )


def finetune_head(
    model: Classifier,
    data: ClientData,
    pipeline: InputPipeline,
    settings: LocalTraining,
    generator: torch.Generator,
    options: DeviceOptions = DeviceOptions(),  # noqa: B008 (frozen)
) -> None:
    """One pass of CE over `data` in shuffled full batches (the last one partial, as FNBench's
    loader) updating only `model.head` (SGD with the run's settings), in place."""
    model.train()
    optimiser = torch.optim.SGD(
        model.head.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    device = data.inputs.device
    order = torch.randperm(len(data), generator=generator).to(device)
    for start in range(0, len(data), settings.batch_size):
        idx = order[start : start + settings.batch_size]
        inputs = options.prepare_inputs(pipeline.train_batch(data.inputs[idx], generator))
        with options.autocast(device):
            logits = model(inputs)
        loss = F.cross_entropy(logits.float(), data.observed_labels[idx])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()


def probe_input(
    model: Classifier, data: ClientData, pipeline: InputPipeline, generator: torch.Generator
) -> torch.Tensor:
    """The fixed random input whose outputs measure how alike two clients' models are: standard
    normal noise of one eval-transformed input's shape (FNBench: torch.randn(1, 3, 32, 32)), or,
    for token inputs, 64 token ids drawn uniformly from the model's vocabulary (FNBench has no
    probe for text). The same on every client for the same generator seed."""
    example = pipeline.eval_batch(data.inputs[:1])
    if example.is_floating_point():
        return torch.randn(example.shape, generator=generator).to(example.device)
    vocabulary = model.embedding.num_embeddings  # a token model (models.FastText)
    return torch.randint(0, vocabulary, (1, 64), generator=generator).to(example.device)


def reliability_report(
    model: Classifier,
    data: ClientData,
    pipeline: InputPipeline,
    probe: torch.Tensor,
    batch_size: int,
    options: DeviceOptions = DeviceOptions(),  # noqa: B008 (frozen)
) -> tuple[float, list[float]]:
    """(expertise: the model's accuracy on the client's given labels, in [0, 1]; the probe's
    logits, C floats), both in eval mode."""
    with torch.no_grad():
        logits = predict_logits(model, data.inputs, pipeline, batch_size, options)
        expertise = float((logits.argmax(dim=1) == data.observed_labels).float().mean())
        model.eval()
        with options.autocast(probe.device):
            probe_logits = model(options.prepare_inputs(probe)).float()
    return expertise, [float(v) for v in probe_logits.view(-1).cpu()]


def select_clean_samples(
    previous: Classifier | None,
    neighbours: list[Classifier],
    scores: list[float],
    data: ClientData,
    pipeline: InputPipeline,
    settings: LocalTraining,
    threshold: float,
    seed: int,
    generator: torch.Generator,
    eval_batch_size: int,
    options: DeviceOptions = DeviceOptions(),  # noqa: B008 (frozen)
) -> np.ndarray:
    """FedRN's sample selection (FNBench's train_phase2 before training): `scores` holds the
    previous model's score first when there is one, then the neighbours'. The neighbours'
    heads are fine-tuned in place on the samples the previous model deems clean (on all
    samples when there is no previous model). Returns the selected positions (int64)."""
    probabilities = []
    start = np.arange(len(data))
    if previous is not None:
        own = clean_probability(
            per_sample_losses(previous, data, pipeline, eval_batch_size, options), seed
        )
        probabilities.append(own)
        start = np.flatnonzero(own > threshold)
        if len(start) == 0:  # FNBench: no clean sample -> all of them
            start = np.arange(len(data))
    clean_part = subset(data, start)
    for neighbour in neighbours:
        finetune_head(neighbour, clean_part, pipeline, settings, generator, options)
        losses = per_sample_losses(neighbour, data, pipeline, eval_batch_size, options)
        probabilities.append(clean_probability(losses, seed))
    return combined_clean(probabilities, scores, threshold, settings.batch_size)
