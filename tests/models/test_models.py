"""Tests for models/__init__.py: sizes, shapes, features and input checks (CPU, tiny batches)."""

from __future__ import annotations

import pytest
import torch

from models import MODEL_NAMES, build_model, check_model_fits

# (name, build kwargs, a tiny input batch factory, number of classes, feature width)
VOCAB = 50


def image_batch(c, h, w, n=2):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0))


def token_batch(n=3, length=7):
    tokens = torch.randint(2, VOCAB, (n, length), generator=torch.Generator().manual_seed(0))
    tokens[0, 5:] = 1  # some padding at the end of one row
    return tokens


CASES = {
    "digitsnet": ({}, lambda: image_batch(1, 8, 8), 10, 128),
    "lenet": ({}, lambda: image_batch(3, 32, 32), 10, 84),
    "resnet18": ({}, lambda: image_batch(3, 32, 32), 10, 512),
    "fasttext": ({"vocab_size": VOCAB}, token_batch, 4, 256),
    "resnet50": ({}, lambda: image_batch(3, 64, 64), 14, 2048),
}


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_model_name_is_covered():
    assert set(CASES) == set(MODEL_NAMES)


# --- parameter counts (fidelity §7) -----------------------------------------------------------


def test_resnet18_parameter_count():
    assert num_parameters(build_model("resnet18", 10)) == 11_173_962


def test_lenet_parameter_count():
    assert num_parameters(build_model("lenet", 10)) == 62_006


def test_fasttext_parameter_count_on_agnews_vocabulary():
    model = build_model("fasttext", 4, vocab_size=95_814)
    assert num_parameters(model) == 24_595_204


# --- forward -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shape_and_features(name):
    kwargs, make_batch, num_classes, width = CASES[name]
    torch.manual_seed(0)
    model = build_model(name, num_classes, **kwargs).eval()
    x = make_batch()
    with torch.no_grad():
        logits = model(x)
        logits2, features = model.forward_with_features(x)
    assert logits.shape == (x.shape[0], num_classes)
    assert features.shape == (x.shape[0], width)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits2, logits, rtol=0, atol=0)
    # the logits are the head applied to those features
    torch.testing.assert_close(model.head(features), logits)


def test_fasttext_ignores_padding():
    torch.manual_seed(0)
    model = build_model("fasttext", 4, vocab_size=VOCAB, pad_index=1).eval()
    tokens = token_batch()
    padded = torch.cat([tokens, torch.ones(tokens.shape[0], 9, dtype=torch.long)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded), model(tokens))
        # the padding embedding does not leak in even if it is non-zero
        model.embedding.weight[1].fill_(5.0)
        torch.testing.assert_close(model(padded), model(tokens))


def test_fasttext_features_are_mean_of_non_padding_embeddings():
    torch.manual_seed(0)
    model = build_model("fasttext", 4, vocab_size=VOCAB).eval()
    tokens = torch.tensor([[5, 7, 9, 1, 1]])
    with torch.no_grad():
        mean = model.embedding.weight[[5, 7, 9]].mean(0, keepdim=True)
        torch.testing.assert_close(model.features(tokens), model.fc(mean))


def test_fasttext_all_padding_row_is_finite():
    model = build_model("fasttext", 4, vocab_size=VOCAB).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.ones(2, 6, dtype=torch.long))).all()


def test_fasttext_needs_vocab_size():
    with pytest.raises(ValueError, match="vocab_size"):
        build_model("fasttext", 4)


def test_resnet50_takes_any_image_size():
    model = build_model("resnet50", 3).eval()
    with torch.no_grad():
        assert model(image_batch(3, 40, 56, n=1)).shape == (1, 3)


def test_same_seed_same_initialisation():
    torch.manual_seed(3)
    a = build_model("lenet", 10)
    torch.manual_seed(3)
    b = build_model("lenet", 10)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


# --- input checks ------------------------------------------------------------------------------


def test_check_model_fits_accepts_matching_inputs():
    check_model_fits("lenet", "image", (3, 32, 32))
    check_model_fits("resnet18", "image", (3, 32, 32))
    check_model_fits("digitsnet", "image", (1, 8, 8))
    check_model_fits("resnet50", "image", (3, 224, 224))
    check_model_fits("fasttext", "text", None)


def test_check_model_fits_rejects_wrong_image_shape():
    with pytest.raises(ValueError) as info:
        check_model_fits("lenet", "image", (1, 8, 8))
    message = str(info.value)
    assert "lenet" in message
    assert "(1, 8, 8)" in message
    assert "models that fit: digitsnet" in message


def test_check_model_fits_rejects_image_model_on_text():
    with pytest.raises(ValueError) as info:
        check_model_fits("lenet", "text", None)
    message = str(info.value)
    assert "text" in message
    assert "models that fit: fasttext" in message


def test_check_model_fits_rejects_text_model_on_images():
    with pytest.raises(ValueError) as info:
        check_model_fits("fasttext", "image", (3, 32, 32))
    fits = str(info.value).split("models that fit:")[1]
    assert {m.strip() for m in fits.split(",")} == {"lenet", "resnet18", "resnet50"}


def test_unknown_model_name_lists_allowed():
    with pytest.raises(ValueError) as info:
        build_model("vgg16", 10)
    message = str(info.value)
    assert "vgg16" in message
    for name in MODEL_NAMES:
        assert name in message


def test_pretrained_weights_load_into_the_backbone_and_leave_the_new_head(tmp_path):
    import torchvision

    from models import load_pretrained

    source = torchvision.models.resnet50()
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = build_model("resnet50", 14)
    head = model.head.weight.clone()
    load_pretrained(model, tmp_path / "w.pth")
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)
    assert torch.equal(model.backbone.layer4[2].bn3.running_mean, source.layer4[2].bn3.running_mean)
    assert torch.equal(model.head.weight, head)
    with pytest.raises(ValueError, match="pretrained weights fit only resnet50"):
        load_pretrained(build_model("lenet", 10), tmp_path / "w.pth")


# --- mixup's forward ---------------------------------------------------------------------------


def test_image_mixup_blends_the_inputs():
    torch.manual_seed(0)
    model = build_model("digitsnet", 10).eval()
    x, partner = image_batch(1, 8, 8, n=3), torch.tensor([2, 0, 1])
    expected = model(0.3 * x + 0.7 * x[partner])
    assert torch.allclose(model.mixed_forward(x, partner, 0.3), expected)


def test_fasttext_mixup_blends_the_sentence_embeddings():
    torch.manual_seed(0)
    model = build_model("fasttext", 4, vocab_size=VOCAB)
    tokens, partner = token_batch(), torch.tensor([1, 2, 0])
    # by hand: the mean of each row's non-padding embeddings, blended, then fc and head
    rows = [model.embedding(t[t != 1]).mean(0) for t in tokens]
    means = torch.stack(rows)
    blended = 0.25 * means + 0.75 * means[partner]
    expected = model.head(model.fc(blended))
    assert torch.allclose(model.mixed_forward(tokens, partner, 0.25), expected, atol=1e-5)
    assert torch.allclose(model.mixed_forward(tokens, partner, 1.0), model(tokens), atol=1e-6)
