"""Tests for FedLSR (client_app/fedlsr.py, strategies.rules.Fedlsr) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from client_app.fedlsr import fedlsr_loss, js_divergence, sharpened_mix, train_fedlsr
from common.config import ConfigError, config_with
from common.protocol import LocalTraining
from data.transforms import pipeline_for
from models import build_model
from strategies.registry import check_strategy_settings
from strategies.rules import FedlsrParams
from tests.client_app.test_training import separable_data


def test_sharpened_mix_by_hand():
    logits1 = torch.log(torch.tensor([[0.5, 0.5]]))
    logits2 = torch.log(torch.tensor([[0.9, 0.1]]))
    # p = 0.25 (0.5, 0.5) + 0.75 (0.9, 0.1) = (0.8, 0.2); p^2 = (0.64, 0.04) -> /0.68
    out = sharpened_mix(logits1, logits2, 0.25)
    assert torch.allclose(out, torch.tensor([[0.64 / 0.68, 0.04 / 0.68]]))


def test_js_divergence_is_torchs_kl_div_mean():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
    q = torch.tensor([[0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])
    kl = torch.nn.KLDivLoss(reduction="mean")
    m = ((p + q) / 2).log()
    assert float(js_divergence(p, q)) == pytest.approx(float((kl(m, p) + kl(m, q)) / 2))
    assert float(js_divergence(q, q)) == pytest.approx(0.0, abs=1e-7)


def test_fedlsr_loss_by_hand():
    logits1 = torch.tensor([[1.0, 0.0]])
    logits2 = torch.tensor([[0.0, 0.0]])
    targets = torch.tensor([0])
    s1 = 1 / (1 + math.exp(-1.0))  # softmax(o1)[0]
    p0 = 0.5 * s1 + 0.5 * 0.5
    classification = -math.log(p0**2 / (p0**2 + (1 - p0) ** 2))
    t1 = 1 / (1 + math.exp(-3.0))  # softmax(3 o1)[0]
    a, b = (t1, 1 - t1), (0.5, 0.5)
    m = [(x + y) / 2 for x, y in zip(a, b, strict=True)]
    kl_a = sum(x * math.log(x / z) for x, z in zip(a, m, strict=True)) / 2  # mean over B x C
    kl_b = sum(y * math.log(y / z) for y, z in zip(b, m, strict=True)) / 2
    entropy = -(s1 * math.log(s1) + (1 - s1) * math.log(1 - s1))
    expected = classification + 0.4 * (kl_a + kl_b) / 2 + 0.3 * entropy
    loss = fedlsr_loss(logits1, logits2, targets, 0.5, 0.4, 0.3, 3.0)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_gamma_ramps_over_the_warm_up_share_of_the_rounds():
    params = FedlsrParams(
        fedlsr_gamma=0.4, fedlsr_gamma_e=0.3, fedlsr_temperature=3.0, fedlsr_warmup_ratio=0.2
    )
    # 50 rounds: warm-up of 10; round r has g = r - 1 rounds done
    assert params.settings(1, 50).gamma == 0.0
    assert params.settings(6, 50).gamma == pytest.approx(0.2)
    assert params.settings(11, 50).gamma == pytest.approx(0.4)
    assert FedlsrParams(0.4, 0.3, 3.0, 0.0).settings(1, 50).gamma == pytest.approx(0.4)


def test_text_models_and_bad_values_are_refused_before_the_run():
    with pytest.raises(ConfigError, match="strategy='fedlsr' needs image inputs"):
        check_strategy_settings(config_with(strategy="fedlsr", model="fasttext"), 10)
    with pytest.raises(ConfigError, match="fedlsr-temperature=0"):
        check_strategy_settings(config_with(strategy="fedlsr", fedlsr_temperature=0.0), 10)
    with pytest.raises(ConfigError, match="fedlsr-warmup-ratio=1.5"):
        check_strategy_settings(config_with(strategy="fedlsr", fedlsr_warmup_ratio=1.5), 10)


def test_training_is_seeded_and_learns():
    data = separable_data(n=64, num_classes=4)
    pipeline = pipeline_for("digits")
    settings = LocalTraining(5, 16, 0.05, 0.9, 5e-4)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("digitsnet", 10)
        stats = train_fedlsr(
            model, data, pipeline, settings, 0.4, 0.3, 3.0, torch.Generator().manual_seed(2)
        )
        runs.append((stats.mean_loss, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))
    model.eval()
    with torch.no_grad():
        predicted = model(pipeline.eval_batch(data.inputs)).argmax(1)
    assert float((predicted == data.observed_labels).float().mean()) > 0.9
