"""Tests for client_app/masked.py: MaskedOptim's noisy-client loss, label updates and round.

Tiny linear models on float feature vectors with the identity pipeline, on the CPU. With lr = 0
the model's predictions are fixed, so the label updates of fidelity §3.3 and the merge of §3.6
can be computed by hand.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from client_app.masked import (
    confident_rows,
    init_label_logits,
    masked_optim_loss,
    masked_train_locally,
    merge_labels,
    per_class_loss,
    relabel_unlikely,
    small_loss_mask,
)
from client_app.training import batch_indices
from common.protocol import LocalTraining, MaskedSettings, parse_masked_terms
from data.client_data import ClientData
from data.transforms import InputPipeline

IDENTITY = InputPipeline()
CPU = torch.device("cpu")
C = 10
DIM = 6


def make_data(n: int = 64, num_classes: int = C, seed: int = 0, classes=None) -> ClientData:
    """Float feature vectors with labels; `classes` restricts the observed classes."""
    gen = torch.Generator().manual_seed(seed)
    allowed = torch.arange(num_classes) if classes is None else torch.as_tensor(classes)
    labels = allowed[torch.randint(0, len(allowed), (n,), generator=gen)]
    inputs = torch.randn(n, DIM, generator=gen)
    return ClientData(
        partition_id=0,
        indices=np.arange(n, dtype=np.int64),
        inputs=inputs,
        observed_labels=labels,
        clean_labels=labels.clone(),
        num_classes=num_classes,
    )


def linear_model(seed: int = 0, num_classes: int = C) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(DIM, num_classes)


def bn_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(DIM, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, C)
    )


def training(**changes) -> LocalTraining:
    base = dict(local_epochs=1, batch_size=64, lr=0.0, momentum=0.9, weight_decay=5e-4)
    base.update(changes)
    return LocalTraining(**base)


def predictions(model: torch.nn.Module, data: ClientData) -> torch.Tensor:
    with torch.no_grad():
        return F.softmax(model(data.inputs), dim=1)


def run(model, data, settings, masked=None, labels=None, seed=0):
    masked = MaskedSettings() if masked is None else masked
    labels = init_label_logits(data.observed_labels, data.num_classes) if labels is None else labels
    gen = torch.Generator().manual_seed(seed)
    return masked_train_locally(model, data, IDENTITY, settings, masked, labels, gen)


def unmerge(result_logits, preds, scale=10.0) -> torch.Tensor:
    """softmax(Ytil before the merge), recovered from K * (softmax(Ytil) + P) / 2."""
    return 2 * result_logits / scale - preds


def expected_step(ytil, logits, observed, mask, batch, eta=1000.0, alpha=0.5):
    """Spec §3.2/§3.3 closed form of -eta * dL/dYtil for the rows of one batch."""
    y_d = F.softmax(ytil, dim=1)
    p = F.softmax(logits, dim=1)
    onehot = F.one_hot(observed, C).float()
    num_classes = ytil.shape[1]
    grad = (y_d - p) / (batch * num_classes) + alpha * mask[:, None] * (y_d - onehot) / batch
    return -eta * grad


# --- label logits and the mask -----------------------------------------------------------------


def test_init_label_logits_puts_k_at_the_observed_label():
    observed = torch.tensor([3, 0, 9, 3])
    logits = init_label_logits(observed, C, 10.0)
    assert logits.dtype == torch.float32 and logits.shape == (4, C)
    expected = torch.zeros(4, C)
    expected[torch.arange(4), observed] = 10.0
    assert torch.equal(logits, expected)
    y_d = F.softmax(logits, dim=1)
    torch.testing.assert_close(
        y_d[torch.arange(4), observed], torch.full((4,), 0.99959), atol=5e-6, rtol=0
    )
    torch.testing.assert_close(y_d[0, 1], torch.tensor(4.54e-5), atol=1e-7, rtol=0)


@pytest.mark.parametrize(
    ("batch", "keep", "expected"), [(64, 0.8, 51), (10, 0.25, 2), (64, 1.0, 64)]
)
def test_small_loss_mask_keeps_the_smallest_ce_samples(batch, keep, expected):
    gen = torch.Generator().manual_seed(batch)
    logits = torch.randn(batch, C, generator=gen, requires_grad=True)
    observed = torch.randint(0, C, (batch,), generator=gen)
    mask = small_loss_mask(logits, observed, keep)
    assert mask.dtype == torch.float32 and not mask.requires_grad
    assert int(mask.sum()) == expected
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    losses = F.cross_entropy(logits.detach(), observed, reduction="none")
    if expected < batch:
        assert losses[mask == 1].max() < losses[mask == 0].min()


def test_parse_masked_terms():
    assert parse_masked_terms("compat") == {"compat"}
    assert parse_masked_terms("compat, entropy,class") == {"compat", "entropy", "class"}
    assert parse_masked_terms("none") == frozenset()
    with pytest.raises(ValueError, match="unknown"):
        parse_masked_terms("compat,triplet")
    with pytest.raises(ValueError):
        MaskedSettings(masked_terms="bogus")
    with pytest.raises(ValueError):
        MaskedSettings(mask_keep=1.5)


# --- the loss ----------------------------------------------------------------------------------


def random_batch(batch=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, C, generator=gen) * 2
    ytil = torch.randn(batch, C, generator=gen) * 3
    observed = torch.randint(0, C, (batch,), generator=gen)
    mask = (torch.arange(batch) % 3 != 0).float()  # both values present
    return logits, ytil, observed, mask


def test_loss_value_and_parts_match_the_formulas():
    logits, ytil, observed, mask = random_batch()
    batch = logits.shape[0]
    p = F.softmax(logits, dim=1)
    y_d = F.softmax(ytil, dim=1)
    l_c = (p * (torch.log(p) - torch.log(y_d))).sum(1).mean()
    l_o = -(mask * torch.log(y_d[torch.arange(batch), observed])).sum() / batch
    l_e = -(p * torch.log(p)).sum(1).mean()
    total, parts = masked_optim_loss(logits, ytil, observed, mask, alpha=0.5, beta=0.1)
    torch.testing.assert_close(total, l_c / C + 0.5 * l_o + 0.1 * l_e / C)
    assert parts["class"] == pytest.approx(float(l_c), rel=1e-5)
    assert parts["compat"] == pytest.approx(float(l_o), rel=1e-5)
    assert parts["entropy"] == pytest.approx(float(l_e), rel=1e-5)


def test_loss_gradient_wrt_label_logits_matches_closed_form():
    logits, ytil, observed, mask = random_batch(batch=16, seed=3)
    batch = logits.shape[0]
    ytil = ytil.clone().requires_grad_(True)
    logits = logits.clone().requires_grad_(True)
    total, _ = masked_optim_loss(logits, ytil, observed, mask, alpha=0.5, beta=0.1)
    total.backward()
    y_d = F.softmax(ytil.detach(), dim=1)
    p = F.softmax(logits.detach(), dim=1)
    onehot = F.one_hot(observed, C).float()
    expected = ((y_d - p) / C + 0.5 * mask[:, None] * (y_d - onehot)) / batch
    torch.testing.assert_close(ytil.grad, expected, atol=1e-7, rtol=1e-5)


def test_loss_gradient_wrt_network_logits_is_kl_plus_entropy():
    """Spec §3.2: d/dz of (1/(B C)) sum_i [KL(p_i || y_d,i) + beta H(p_i)]; L_o has none."""
    logits, ytil, observed, mask = random_batch(seed=4)
    batch = logits.shape[0]
    z = logits.clone().requires_grad_(True)
    masked_optim_loss(z, ytil, observed, mask, alpha=0.5, beta=0.1)[0].backward()
    z2 = logits.clone().requires_grad_(True)
    log_p = F.log_softmax(z2, dim=1)
    kl = (log_p.exp() * (log_p - F.log_softmax(ytil, dim=1))).sum(1)
    ent = -(log_p.exp() * log_p).sum(1)
    ((kl + 0.1 * ent).sum() / (batch * C)).backward()
    torch.testing.assert_close(z.grad, z2.grad)


def test_default_mask_touches_only_the_compat_term():
    logits, ytil, observed, mask = random_batch(seed=5)
    ones = torch.ones_like(mask)
    _, with_mask = masked_optim_loss(logits, ytil, observed, mask, alpha=0.5, beta=0.1)
    _, no_mask = masked_optim_loss(logits, ytil, observed, ones, alpha=0.5, beta=0.1)
    assert with_mask["class"] == no_mask["class"]
    assert with_mask["entropy"] == no_mask["entropy"]
    assert with_mask["compat"] < no_mask["compat"]


def test_masked_terms_flag_applies_the_mask_to_other_terms():
    logits, ytil, observed, mask = random_batch(seed=6)
    batch = logits.shape[0]
    _, parts = masked_optim_loss(
        logits, ytil, observed, mask, alpha=0.5, beta=0.1, masked_terms="compat,entropy,class"
    )
    p = F.softmax(logits, dim=1)
    y_d = F.softmax(ytil, dim=1)
    l_c = (mask * (p * (torch.log(p) - torch.log(y_d))).sum(1)).sum() / batch
    l_e = -(mask * (p * torch.log(p)).sum(1)).sum() / batch
    assert parts["class"] == pytest.approx(float(l_c), rel=1e-5)
    assert parts["entropy"] == pytest.approx(float(l_e), rel=1e-5)
    _, unmasked = masked_optim_loss(
        logits, ytil, observed, mask, alpha=0.5, beta=0.1, masked_terms="none"
    )
    _, all_kept = masked_optim_loss(
        logits, ytil, observed, torch.ones_like(mask), alpha=0.5, beta=0.1
    )
    assert unmasked["compat"] == pytest.approx(all_kept["compat"])


# --- the round: label updates ------------------------------------------------------------------


def test_one_epoch_label_step_is_the_spec_effective_step():
    """B = 64, C = 10, alpha = 0.5, eta = 1000: Ytil -= 1.5625 (y_d - p) + 7.8125 m (y_d - e)."""
    data = make_data(n=64)
    model = linear_model()
    preds = predictions(model, data)
    ytil0 = init_label_logits(data.observed_labels, C)
    result = run(copy.deepcopy(model), data, training(), labels=ytil0)
    with torch.no_grad():
        logits = model(data.inputs)
    mask = small_loss_mask(logits, data.observed_labels, 0.8)
    assert int(mask.sum()) == 51
    y_d = F.softmax(ytil0, dim=1)
    onehot = F.one_hot(data.observed_labels, C).float()
    ytil1 = ytil0 - (1.5625 * (y_d - preds) + 7.8125 * mask[:, None] * (y_d - onehot))
    torch.testing.assert_close(unmerge(result.label_logits, preds), F.softmax(ytil1, dim=1))
    assert torch.equal(result.before_merge_labels, ytil1.argmax(1))
    assert result.num_steps == 1


def test_label_gradients_are_gathered_and_applied_once_per_epoch():
    """2 epochs of 2 batches (+5 dropped samples): every batch of an epoch reads the epoch-start
    label logits, the step comes after the epoch, dropped samples get no change that epoch."""
    batch, n, seed = 16, 37, 7
    data = make_data(n=n, seed=1)
    model = linear_model(seed=1)
    preds = predictions(model, data)
    with torch.no_grad():
        all_logits = model(data.inputs)
    ytil = init_label_logits(data.observed_labels, C)
    shuffle = torch.Generator().manual_seed(seed)  # the round's first draws are the shuffles
    for _ in range(2):
        step = torch.zeros_like(ytil)
        for idx in batch_indices(n, batch, shuffle, CPU):
            mask = small_loss_mask(all_logits[idx], data.observed_labels[idx], 0.8)
            step[idx] = expected_step(
                ytil[idx], all_logits[idx], data.observed_labels[idx], mask, batch
            )
        visited = step.abs().sum(1) > 0
        assert int(visited.sum()) == 32  # the 5 dropped samples got no step this epoch
        ytil = ytil + step
    result = run(copy.deepcopy(model), data, training(local_epochs=2, batch_size=batch), seed=seed)
    assert result.num_steps == 4
    torch.testing.assert_close(unmerge(result.label_logits, preds), F.softmax(ytil, dim=1))
    assert torch.equal(result.before_merge_labels, ytil.argmax(1))


def test_label_merge_is_k_times_the_mean_of_label_and_prediction():
    data = make_data(n=40, seed=2)
    model = linear_model(seed=2)
    preds = predictions(model, data)
    masked = MaskedSettings(label_scale=7.0)
    result = run(copy.deepcopy(model), data, training(local_epochs=2, batch_size=8), masked=masked)
    # merged == K (softmax(Y) + P) / 2 for the Y with the recorded argmax; all within [0, K]
    assert result.label_logits.min() >= 0 and result.label_logits.max() <= 7.0
    torch.testing.assert_close(result.label_logits.sum(1), torch.full((40,), 7.0))
    label_part = unmerge(result.label_logits, preds, 7.0)
    assert (label_part > -1e-6).all()
    torch.testing.assert_close(label_part.sum(1), torch.ones(40))
    assert torch.equal(label_part.argmax(1), result.before_merge_labels)
    ytil = torch.randn(5, C)
    p = F.softmax(torch.randn(5, C), dim=1)
    torch.testing.assert_close(merge_labels(ytil, p, 10.0), 10 * (F.softmax(ytil, 1) + p) / 2)


def test_relabel_unlikely_swaps_only_labels_below_the_threshold():
    probabilities = torch.tensor(
        [
            [0.90, 0.06, 0.04],  # label 0 at 0.90: kept
            [0.90, 0.06, 0.04],  # label 2 at 0.04 < 0.05: the prediction, 0
            [0.50, 0.45, 0.05],  # label 2 at 0.05, not below: kept
            [0.02, 0.30, 0.68],  # label 0 at 0.02: the prediction, 2
        ]
    )
    observed = torch.tensor([0, 2, 2, 0])
    assert relabel_unlikely(observed, probabilities, 0.05).tolist() == [0, 0, 2, 2]
    assert relabel_unlikely(observed, probabilities, 0.0).tolist() == [0, 2, 2, 0]
    assert relabel_unlikely(observed, probabilities, 1.0).tolist() == [0, 0, 0, 2]


def test_observed_labels_unchanged_and_label_logits_move():
    data = make_data(n=48, seed=3)
    observed = data.observed_labels.clone()
    ytil0 = init_label_logits(data.observed_labels, C)
    ytil0_copy = ytil0.clone()
    result = run(linear_model(), data, training(lr=0.05, batch_size=16), labels=ytil0)
    assert torch.equal(data.observed_labels, observed)
    assert torch.equal(ytil0, ytil0_copy)  # the input is not modified in place
    assert not torch.allclose(result.label_logits, ytil0)
    assert result.label_logits.dtype == torch.float32 and result.label_logits.shape == (48, C)
    assert math.isfinite(result.mean_loss) and result.num_steps == 3


# --- the round: model and pre-merge ------------------------------------------------------------


def test_lr_zero_upload_equals_the_received_model():
    data = make_data(n=64)
    model = linear_model()
    w0 = copy.deepcopy(model.state_dict())
    result = run(model, data, training(local_epochs=2, batch_size=16))
    for name, value in w0.items():
        torch.testing.assert_close(result.upload_state[name], value)


def test_upload_is_premerged_and_model_holds_w_final():
    data = make_data(n=48, seed=4)
    start = bn_model(seed=4)
    w0 = copy.deepcopy(start.state_dict())
    settings = training(local_epochs=1, batch_size=16, lr=0.1)
    local_only = copy.deepcopy(start)
    final = run(
        local_only, data, settings, masked=MaskedSettings(premerge_local_weight=1.0), seed=3
    )
    w_final = final.upload_state  # zeta = 1: the upload is w_final itself
    model = copy.deepcopy(start)
    result = run(model, data, settings, seed=3)
    assert result.upload_state.keys() == w0.keys()
    for name, value in w0.items():
        got = result.upload_state[name]
        assert got.dtype == value.dtype
        if value.is_floating_point():
            torch.testing.assert_close(got, 0.8 * w_final[name] + 0.2 * value)
    # the model is left holding w_final exactly (the merge pass's BN updates undone)
    for name, value in model.state_dict().items():
        assert torch.equal(value, w_final[name]), name
    assert model.training
    # num_batches_tracked: 0 -> 3 steps locally; 0.8 * 3 = 2.4, truncated to 2
    assert int(w_final["1.num_batches_tracked"]) == 3
    assert result.upload_state["1.num_batches_tracked"].dtype == torch.int64
    assert int(result.upload_state["1.num_batches_tracked"]) == 2
    assert not torch.equal(w_final["0.weight"], w0["0.weight"])


def test_same_seed_gives_identical_results():
    data = make_data(n=50, seed=5)
    start = bn_model(seed=5)
    settings = training(local_epochs=2, batch_size=16, lr=0.05)
    a = run(copy.deepcopy(start), data, settings, seed=11)
    b = run(copy.deepcopy(start), data, settings, seed=11)
    c = run(copy.deepcopy(start), data, settings, seed=12)
    assert torch.equal(a.label_logits, b.label_logits)
    assert a.mean_loss == b.mean_loss
    for name in a.upload_state:
        assert torch.equal(a.upload_state[name], b.upload_state[name])
    assert not torch.equal(a.label_logits, c.label_logits)


def test_wrong_label_logits_shape_is_rejected():
    data = make_data(n=20)
    with pytest.raises(ValueError, match="shape"):
        run(linear_model(), data, training(batch_size=8), labels=torch.zeros(19, C))


# --- per-class loss ----------------------------------------------------------------------------


def test_per_class_loss_means_and_nan_for_absent_classes():
    data = make_data(n=70, seed=6, classes=[0, 2, 5, 7])
    model = linear_model(seed=6)
    model.train()
    losses, present, agree = per_class_loss(
        model, data, IDENTITY, torch.Generator().manual_seed(0), 16
    )
    assert model.training  # mode restored
    assert losses.device.type == "cpu" and losses.dtype == torch.float32 and losses.shape == (C,)
    assert present.dtype == torch.bool
    assert present.tolist() == [c in (0, 2, 5, 7) for c in range(C)]
    assert torch.isnan(losses[~present]).all() and not torch.isnan(losses[present]).any()
    with torch.no_grad():
        per_sample = F.cross_entropy(model(data.inputs), data.observed_labels, reduction="none")
        predicted = model(data.inputs).argmax(dim=1)
    for c in (0, 2, 5, 7):
        expected = per_sample[data.observed_labels == c].mean()
        torch.testing.assert_close(losses[c], expected)
    # the agreement: per observed class, the samples predicted as labelled (over all batches)
    hits = predicted == data.observed_labels
    assert agree.dtype == torch.int64
    assert agree.tolist() == [int(hits[data.observed_labels == c].sum()) for c in range(C)]
    assert 0 < int(agree.sum()) < len(data)  # not trivially all or nothing


def test_per_class_loss_uses_eval_mode():
    data = make_data(n=40, seed=7)
    model = bn_model(seed=7)
    with torch.no_grad():  # give BN non-trivial running statistics
        model[1].running_mean.fill_(0.5)
        model[1].running_var.fill_(2.0)
    losses, present, _ = per_class_loss(model, data, IDENTITY, torch.Generator().manual_seed(0), 7)
    model.eval()
    with torch.no_grad():
        per_sample = F.cross_entropy(model(data.inputs), data.observed_labels, reduction="none")
    for c in torch.nonzero(present).flatten().tolist():
        torch.testing.assert_close(losses[c], per_sample[data.observed_labels == c].mean())


def test_a_confidence_gate_keeps_the_label_where_the_prediction_is_unsure():
    ytil = torch.tensor([[10.0, 0.0], [0.0, 10.0], [10.0, 0.0]])
    predictions = torch.tensor([[0.1, 0.9], [0.6, 0.4], [0.5, 0.5]])
    own = F.softmax(ytil, 1)
    merged = merge_labels(ytil, predictions, 10.0, min_confidence=0.6)
    torch.testing.assert_close(merged[0], 10 * (own[0] + predictions[0]) / 2)  # 0.9 >= 0.6
    torch.testing.assert_close(merged[1], 10 * (own[1] + predictions[1]) / 2)  # 0.6: the edge
    torch.testing.assert_close(merged[2], 10 * own[2])  # 0.5 < 0.6: the label alone
    torch.testing.assert_close(merge_labels(ytil, predictions, 10.0, 0.0),
                               merge_labels(ytil, predictions, 10.0))  # fmt: skip


def test_the_merge_gate_must_be_a_probability():
    with pytest.raises(ValueError, match="label-merge-confidence must lie in \\[0, 1\\], got 1.5"):
        MaskedSettings(label_merge_confidence=1.5)


def test_label_steps_wait_for_a_confident_prediction():
    data = make_data(n=48, seed=3)
    model = linear_model(seed=2)
    ytil0 = init_label_logits(data.observed_labels, C)
    # nothing is ever this sure: no label step, no merge -> the label distribution alone
    never = MaskedSettings(label_step_confidence=1.0, label_merge_confidence=1.0)
    result = run(copy.deepcopy(model), data, training(local_epochs=2, batch_size=8), never)
    torch.testing.assert_close(result.label_logits, 10 * F.softmax(ytil0, dim=1))
    # a gate every prediction passes changes nothing
    always = run(copy.deepcopy(model), data, training(local_epochs=2, batch_size=8),
                 MaskedSettings(label_step_confidence=1e-6))  # fmt: skip
    plain = run(copy.deepcopy(model), data, training(local_epochs=2, batch_size=8))
    torch.testing.assert_close(always.label_logits, plain.label_logits)


def test_confident_rows_marks_the_sure_predictions():
    logits = torch.tensor([[4.0, 0.0], [0.1, 0.0]])  # top probabilities 0.982 and 0.525
    assert confident_rows(logits, 0.9).tolist() == [[1.0], [0.0]]
    assert confident_rows(logits, 0.5).tolist() == [[1.0], [1.0]]
