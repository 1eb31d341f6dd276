"""Tests for client_app/training.py: the losses and the local training loop (tiny, CPU)."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from client_app.training import (
    LocalTraining,
    batch_indices,
    local_optimiser,
    logit_adjusted_cross_entropy,
    logit_adjusted_distillation,
    proximal_term,
    symmetric_cross_entropy,
    train_locally,
)
from common import seeding
from data.client_data import ClientData
from data.transforms import pipeline_for
from models import build_model

PIPELINE = pipeline_for("digits")
CPU = torch.device("cpu")


def separable_data(n: int = 64, num_classes: int = 4, seed: int = 0) -> ClientData:
    """digits-shaped uint8 images (values 0..16) where class c lights up row c."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    images = rng.integers(0, 3, size=(n, 1, 8, 8)).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, 0, 2 * c, :] = 16
    labels_t = torch.as_tensor(labels, dtype=torch.int64)
    return ClientData(
        partition_id=0,
        indices=np.arange(n, dtype=np.int64),
        inputs=torch.as_tensor(images),
        observed_labels=labels_t,
        clean_labels=labels_t.clone(),
        num_classes=10,
    )


def fresh_model(seed: int = 0) -> torch.nn.Module:
    """A tiny linear classifier on 1x8x8 inputs (the loop takes any module; this keeps it fast)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


def wrong_labels_and_a_clean_model():
    """(noisy data, the wrong positions, a digits CNN trained on the clean labels): 8 of the 16
    class-1 samples of separable_data(64, 4) labelled 3, for the sample-selection tests."""
    data = separable_data(n=64, num_classes=4)
    labels = data.observed_labels.clone()
    wrong = np.arange(1, 33, 4)
    labels[wrong] = 3
    noisy = dataclasses.replace(data, observed_labels=labels)
    torch.manual_seed(0)
    model = build_model("digitsnet", 10)
    trained = LocalTraining(3, 8, 0.05, 0.9, 5e-4)
    train_locally(model, data, PIPELINE, trained, torch.Generator().manual_seed(0))
    return noisy, wrong, model


def settings(**changes) -> LocalTraining:
    base = dict(local_epochs=2, batch_size=16, lr=0.05, momentum=0.9, weight_decay=5e-4)
    base.update(changes)
    return LocalTraining(**base)


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def distance(model: torch.nn.Module, start: list[torch.Tensor]) -> float:
    pairs = zip(model.parameters(), start, strict=True)
    return float(sum(((p.detach() - s) ** 2).sum() for p, s in pairs))


def dataset_loss(model: torch.nn.Module, data: ClientData) -> float:
    model.eval()
    with torch.no_grad():
        return float(F.cross_entropy(model(PIPELINE.eval_batch(data.inputs)), data.observed_labels))


# --- losses ------------------------------------------------------------------------------------


def test_logit_adjusted_ce_is_ce_on_shifted_logits():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=gen)
    targets = torch.randint(0, 5, (8,), generator=gen)
    prior = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    expected = F.cross_entropy(logits + torch.log(prior), targets)
    got = logit_adjusted_cross_entropy(logits, targets, torch.log(prior))
    torch.testing.assert_close(got, expected)
    # and it is a real adjustment: not the plain CE
    assert not torch.isclose(got, F.cross_entropy(logits, targets))


def test_logit_adjusted_ce_with_uniform_prior_is_plain_ce():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, generator=gen)
    targets = torch.randint(0, 4, (6,), generator=gen)
    log_prior = torch.log(torch.full((4,), 0.25))
    torch.testing.assert_close(
        logit_adjusted_cross_entropy(logits, targets, log_prior), F.cross_entropy(logits, targets)
    )


def test_logit_adjusted_ce_with_absent_class_is_finite():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 4, generator=gen, requires_grad=True)
    targets = torch.tensor([0, 1, 3, 0, 1, 3])  # class 2 absent
    prior = torch.tensor([2 / 6, 2 / 6, 0.0, 2 / 6])
    loss = logit_adjusted_cross_entropy(logits, targets, torch.log(prior))
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # the absent class has probability 0, so it gets no gradient
    assert torch.equal(logits.grad[:, 2], torch.zeros(6))


def test_train_locally_logit_adjusted_with_absent_classes_stays_finite():
    data = separable_data(num_classes=4)  # classes 4..9 of 10 are absent
    assert (data.class_prior()[4:] == 0).all()
    model = fresh_model()
    stats = train_locally(
        model,
        data,
        PIPELINE,
        settings(local_loss="logit-adjusted"),
        torch.Generator().manual_seed(0),
    )
    assert math.isfinite(stats.mean_loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_proximal_term_is_sum_of_squared_differences():
    model = fresh_model()
    anchor = weights(model)
    shifted = [a + 0.1 * (i + 1) for i, a in enumerate(anchor)]
    expected = sum(((0.1 * (i + 1)) ** 2) * a.numel() for i, a in enumerate(anchor))
    with torch.no_grad():
        assert float(proximal_term(model, anchor)) == 0.0
        assert float(proximal_term(model, shifted)) == pytest.approx(expected, rel=1e-4)


def test_proximal_term_gradient_pulls_towards_anchor():
    model = fresh_model()
    anchor = [p.detach() + 1.0 for p in model.parameters()]
    proximal_term(model, anchor).backward()
    for p in model.parameters():
        torch.testing.assert_close(p.grad, torch.full_like(p, -2.0))


def test_proximal_mu_keeps_the_model_closer_to_its_start():
    data = separable_data()
    start_model = fresh_model()
    start = weights(start_model)
    plain, prox = copy.deepcopy(start_model), copy.deepcopy(start_model)
    train_locally(plain, data, PIPELINE, settings(), torch.Generator().manual_seed(5))
    train_locally(prox, data, PIPELINE, settings(proximal_mu=5.0), torch.Generator().manual_seed(5))
    assert 0 < distance(prox, start) < distance(plain, start)


def test_max_grad_norm_bounds_every_step_to_lr_times_the_norm():
    """Plain SGD (no momentum, no weight decay) moves by lr * the clipped gradient: with
    max-grad-norm 0.01, one epoch of 4 steps moves the weights by at most 4 * lr * 0.01; without
    clipping the same steps move them further (FNBench's `clipping`)."""
    data = separable_data()
    start_model = fresh_model()
    start = weights(start_model)
    plain, clipped = copy.deepcopy(start_model), copy.deepcopy(start_model)
    sgd = dict(local_epochs=1, momentum=0.0, weight_decay=0.0, lr=0.5)
    train_locally(plain, data, PIPELINE, settings(**sgd), torch.Generator().manual_seed(5))
    train_locally(clipped, data, PIPELINE, settings(**sgd, max_grad_norm=0.01),
                  torch.Generator().manual_seed(5))  # fmt: skip
    moved = math.sqrt(distance(clipped, start))
    assert 0 < moved <= 4 * 0.5 * 0.01 * (1 + 1e-5)
    assert math.sqrt(distance(plain, start)) > 10 * moved


# --- the loop ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "batch_size", "epochs"), [(64, 16, 2), (70, 16, 3), (15, 4, 1)])
def test_number_of_steps_drops_the_last_partial_batch(n, batch_size, epochs):
    data = separable_data(n=n)
    stats = train_locally(
        fresh_model(),
        data,
        PIPELINE,
        settings(local_epochs=epochs, batch_size=batch_size),
        torch.Generator().manual_seed(0),
    )
    assert stats.num_steps == epochs * (n // batch_size)


def test_no_step_when_fewer_samples_than_a_batch():
    data = separable_data(n=10)
    model = fresh_model()
    start = weights(model)
    stats = train_locally(
        model, data, PIPELINE, settings(batch_size=16), torch.Generator().manual_seed(0)
    )
    assert stats.num_steps == 0
    assert math.isfinite(stats.mean_loss)
    for p, s in zip(model.parameters(), start, strict=True):
        assert torch.equal(p.detach(), s)


def test_same_seed_gives_bit_identical_weights():
    data = separable_data(n=32)
    torch.manual_seed(0)
    a = build_model("digitsnet", 10)  # the demo model, with its conv layers
    b, c = copy.deepcopy(a), copy.deepcopy(a)
    gen = seeding.torch_generator
    train_locally(a, data, PIPELINE, settings(), gen(1, seeding.LOCAL_SHUFFLE, 3, 0))
    train_locally(b, data, PIPELINE, settings(), gen(1, seeding.LOCAL_SHUFFLE, 3, 0))
    train_locally(c, data, PIPELINE, settings(), gen(1, seeding.LOCAL_SHUFFLE, 4, 0))
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    assert any(
        not torch.equal(pa, pc)
        for pa, pc in zip(a.state_dict().values(), c.state_dict().values(), strict=True)
    )


def test_training_reduces_the_loss_on_a_separable_problem():
    data = separable_data(n=64)
    model = fresh_model()
    before = dataset_loss(model, data)
    stats = train_locally(
        model, data, PIPELINE, settings(local_epochs=5), torch.Generator().manual_seed(0)
    )
    after = dataset_loss(model, data)
    assert stats.num_steps == 20
    assert after < 0.5 * before
    model.eval()
    with torch.no_grad():
        predicted = model(PIPELINE.eval_batch(data.inputs)).argmax(1)
    assert float((predicted == data.observed_labels).float().mean()) >= 0.9


def test_training_uses_observed_not_clean_labels():
    data = separable_data(n=64, num_classes=2)
    flipped = ClientData(
        partition_id=0,
        indices=data.indices,
        inputs=data.inputs,
        observed_labels=1 - data.observed_labels,  # every label wrong
        clean_labels=data.clean_labels,
        num_classes=10,
    )
    model = fresh_model()
    train_locally(
        model, flipped, PIPELINE, settings(local_epochs=5), torch.Generator().manual_seed(0)
    )
    model.eval()
    with torch.no_grad():
        predicted = model(PIPELINE.eval_batch(data.inputs)).argmax(1)
    assert float((predicted == flipped.observed_labels).float().mean()) >= 0.9


def test_batch_indices_cover_each_sample_at_most_once():
    gen = torch.Generator().manual_seed(0)
    batches = batch_indices(50, 8, gen, CPU)
    assert len(batches) == 6
    assert all(b.shape == (8,) and b.dtype == torch.int64 for b in batches)
    flat = torch.cat(batches)
    assert len(torch.unique(flat)) == 48
    assert int(flat.min()) >= 0 and int(flat.max()) < 50
    # another epoch from the same generator is another order
    again = torch.cat(batch_indices(50, 8, gen, CPU))
    assert not torch.equal(flat, again)


def test_batch_indices_exact_multiple_covers_everything():
    batches = batch_indices(32, 8, torch.Generator().manual_seed(1), CPU)
    assert sorted(torch.cat(batches).tolist()) == list(range(32))


def test_class_prior_is_the_label_distribution():
    data = separable_data(n=12, num_classes=3)
    prior = data.class_prior()
    assert prior.shape == (10,)
    torch.testing.assert_close(prior[:3], torch.full((3,), 1 / 3))
    assert float(prior.sum()) == pytest.approx(1.0)


# --- the noisy-label baselines' losses ---------------------------------------------------------


def test_symmetric_ce_is_alpha_ce_plus_beta_reverse_ce_by_hand():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    p = F.softmax(logits, dim=1).clamp(min=1e-7)
    others = p.masked_fill(F.one_hot(targets, 4).bool(), 0.0).sum(1)
    reverse = (-math.log(1e-4) * others).mean()  # log q = 0 for the label, log 1e-4 elsewhere
    expected = 0.1 * F.cross_entropy(logits, targets) + 1.0 * reverse
    assert torch.allclose(symmetric_cross_entropy(logits, targets), expected)
    only_ce = symmetric_cross_entropy(logits, targets, alpha=1.0, beta=0.0)
    assert torch.allclose(only_ce, F.cross_entropy(logits, targets))


def test_symmetric_ce_reverse_term_is_bounded_for_a_confidently_wrong_sample():
    # CE grows without bound; the reverse term stays below -log(1e-4) per sample.
    logits, target = torch.tensor([[50.0, 0.0, 0.0]]), torch.tensor([1])
    reverse_only = symmetric_cross_entropy(logits, target, alpha=0.0, beta=1.0)
    assert float(reverse_only) <= -math.log(1e-4) * (1 + 1e-5)
    assert float(F.cross_entropy(logits, target)) > 40


def test_la_distillation_without_kd_weight_is_logit_adjusted_ce():
    torch.manual_seed(1)
    logits, teacher, targets = torch.randn(5, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    log_prior = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    got = logit_adjusted_distillation(logits, teacher, targets, log_prior, kd_weight=0.0)
    assert torch.allclose(got, logit_adjusted_cross_entropy(logits, targets, log_prior))


def test_la_distillation_kd_term_by_hand():
    torch.manual_seed(2)
    logits, teacher, targets = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    log_prior = torch.log(torch.tensor([0.2, 0.3, 0.5]))
    q = F.softmax(teacher / 0.8, dim=1)  # only the teacher is tempered
    log_student = F.log_softmax(logits + log_prior, dim=1)
    kl = (q * (q.log() - log_student)).sum(1).mean()
    got = logit_adjusted_distillation(logits, teacher, targets, log_prior, 1.0, temperature=0.8)
    assert torch.allclose(got, kl)


def test_la_distillation_with_an_absent_class_is_finite():
    logits, teacher, targets = torch.randn(3, 3), torch.randn(3, 3), torch.tensor([0, 1, 0])
    log_prior = torch.log(torch.tensor([0.6, 0.4, 0.0]))
    loss = logit_adjusted_distillation(logits, teacher, targets, log_prior, kd_weight=0.5)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("loss", ["symmetric-ce", "la-distill"])
def test_the_baseline_losses_train(loss):
    data = separable_data(n=64)
    model = fresh_model()
    before = dataset_loss(model, data)
    changes = {"kd_weight": 0.3} if loss == "la-distill" else {}
    train_locally(
        model,
        data,
        PIPELINE,
        settings(local_epochs=5, local_loss=loss, **changes),
        torch.Generator(),
    )
    assert dataset_loss(model, data) < 0.7 * before


def test_an_unknown_loss_is_refused_before_training():
    with pytest.raises(ValueError, match="'focal'"):
        train_locally(fresh_model(), separable_data(), PIPELINE, settings(local_loss="focal"), None)


def digits_classifier(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("digitsnet", 10)


def test_mixup_training_is_seeded_and_learns():
    data = separable_data(n=64)
    runs = []
    for _ in range(2):
        model = digits_classifier()
        train_locally(
            model, data, PIPELINE, settings(local_epochs=5, mixup_alpha=1.0),
            torch.Generator().manual_seed(3),
        )  # fmt: skip
        runs.append(weights(model))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)
    assert dataset_loss(model, data) < 0.7 * dataset_loss(digits_classifier(), data)
    with pytest.raises(ValueError, match="mixup goes with the 'ce' loss"):
        train_locally(
            model, data, PIPELINE, settings(mixup_alpha=1.0, local_loss="symmetric-ce"), None
        )


def test_fedcorr_proximal_norm_keeps_the_model_closer_to_its_start():
    data = separable_data(n=64)
    free, held = fresh_model(), fresh_model()
    start = weights(free)
    train_locally(free, data, PIPELINE, settings(local_epochs=3), torch.Generator().manual_seed(0))
    train_locally(
        held, data, PIPELINE, settings(local_epochs=3, proximal_norm=2.0),
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert all(torch.isfinite(p).all() for p in held.parameters())  # no NaN from sqrt at 0
    assert distance(held, start) < distance(free, start)


def test_the_fused_sgd_step_is_used_for_large_models_on_the_cpu_only():
    settings = LocalTraining(1, 8, 0.01, 0.9, 5e-4)
    fasttext = build_model("fasttext", 4, vocab_size=30_000)
    assert local_optimiser(fasttext, settings).defaults["fused"] is True
    assert not local_optimiser(build_model("lenet", 10), settings).defaults["fused"]


def test_the_fused_sgd_step_matches_the_plain_one():
    """Same update up to float rounding (fastText's embedding, a weight-decayed momentum step)."""
    torch.manual_seed(0)
    settings = LocalTraining(1, 8, 0.01, 0.9, 5e-4)
    fused_model = build_model("fasttext", 4, vocab_size=30_000)
    plain_model = copy.deepcopy(fused_model)
    fused = local_optimiser(fused_model, settings)
    plain = torch.optim.SGD(plain_model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    tokens, labels = torch.randint(2, 30_000, (16, 12)), torch.randint(0, 4, (16,))
    for model, optimiser in ((fused_model, fused), (plain_model, plain)):
        for _ in range(3):
            optimiser.zero_grad()
            F.cross_entropy(model(tokens), labels).backward()
            optimiser.step()
    for a, b in zip(fused_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
