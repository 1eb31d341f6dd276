"""Tests for data/transforms.py: batched pipelines against per-sample reference code."""

import pytest
import torch
import torch.nn.functional as F

from data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePipeline,
    InputPipeline,
    TokenPipeline,
    crop_flip,
    draw_crop_flip,
    pipeline_for,
)

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def cifar_batch(b=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (b, 3, 32, 32), generator=g, dtype=torch.uint8)


def reference_crop_flip(img, top, left, flip, padding=4):
    """torchvision's RandomCrop(32, padding) + RandomHorizontalFlip for one CHW image."""
    h, w = img.shape[1:]
    out = F.pad(img, (padding,) * 4)[:, top : top + h, left : left + w]
    return out.flip(-1) if flip else out


@pytest.mark.parametrize("name", ["cifar10", "cifar10n"])
def test_cifar_train_matches_reference(name):
    x = cifar_batch()
    out = pipeline_for(name).train_batch(x, torch.Generator().manual_seed(5))
    top, left, flip = draw_crop_flip(16, 4, torch.Generator().manual_seed(5))
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32
    for i in range(16):
        ref = reference_crop_flip(x[i], int(top[i]), int(left[i]), bool(flip[i]))
        ref = (ref.float() / 255 - MEAN) / STD
        assert torch.equal(out[i], ref)


def test_offsets_and_flips_cover_range():
    top, left, flip = draw_crop_flip(4000, 4, torch.Generator().manual_seed(0))
    assert top.min() == 0 and top.max() == 8 and left.min() == 0 and left.max() == 8
    assert 0.45 < flip.float().mean() < 0.55


def test_crop_flip_extremes_and_black_padding():
    x = cifar_batch(4)
    top = torch.tensor([0, 8, 4, 0])
    left = torch.tensor([0, 8, 4, 8])
    flip = torch.tensor([False, False, False, True])
    out = crop_flip(x, top, left, flip)
    # (0, 0): the first 4 rows and columns are padding; the rest is the shifted image
    assert torch.all(out[0, :, :4, :] == 0) and torch.all(out[0, :, :, :4] == 0)
    assert torch.equal(out[0, :, 4:, 4:], x[0, :, :28, :28])
    assert torch.equal(out[1, :, :28, :28], x[1, :, 4:, 4:])
    assert torch.all(out[1, :, 28:, :] == 0)
    assert torch.equal(out[2], x[2])  # centred crop, no flip
    assert torch.equal(out[3], reference_crop_flip(x[3], 0, 8, True))


def test_padding_is_black_before_normalisation():
    """A white image: the padded pixels come out as (0 - mean) / std, i.e. black."""
    x = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    pipe = pipeline_for("cifar10")
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        out = pipe.train_batch(x, g)
        black = (-MEAN / STD).expand(3, 32, 32)
        white = ((1 - MEAN) / STD).expand(3, 32, 32)
        is_black = torch.isclose(out[0], black).all(dim=0)
        is_white = torch.isclose(out[0], white).all(dim=0)
        assert torch.all(is_black | is_white)
    # at least one draw was not centred, so some padding was visible
    out = crop_flip(x, torch.tensor([0]), torch.tensor([0]), torch.tensor([False]))
    assert out[0, :, 0, 0].tolist() == [0, 0, 0]


def test_same_seed_same_batch_and_different_seed_differs():
    x = cifar_batch(32)
    pipe = pipeline_for("cifar10")
    a = pipe.train_batch(x, torch.Generator().manual_seed(3))
    b = pipe.train_batch(x, torch.Generator().manual_seed(3))
    c = pipe.train_batch(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(0)
    d = pipe.train_batch(x)  # no generator: global CPU RNG
    torch.manual_seed(0)
    assert torch.equal(d, pipe.train_batch(x))


def test_cifar_eval_is_normalised_only():
    x = cifar_batch(3)
    out = pipeline_for("cifar10").eval_batch(x)
    assert torch.equal(out, (x.float() / 255 - MEAN) / STD)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_cifar_train_on_gpu_matches_cpu():
    x = cifar_batch(64)
    pipe = pipeline_for("cifar10")
    cpu = pipe.train_batch(x, torch.Generator().manual_seed(1))
    gpu = pipe.train_batch(x.cuda(), torch.Generator().manual_seed(1))
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-6, atol=1e-6)


def test_digits():
    x = torch.randint(0, 17, (5, 1, 8, 8), dtype=torch.uint8)
    pipe = pipeline_for("digits")
    for out in (pipe.train_batch(x, torch.Generator().manual_seed(0)), pipe.eval_batch(x)):
        assert out.dtype == torch.float32 and out.shape == (5, 1, 8, 8)
        assert torch.equal(out, x.float() / 16)
    assert float(pipe.eval_batch(torch.full((1, 1, 8, 8), 16, dtype=torch.uint8)).max()) == 1.0


def test_clothing1m_no_augmentation():
    x = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    pipe = pipeline_for("clothing1m")
    expected = (x.float() / 255 - MEAN) / STD
    assert torch.equal(pipe.train_batch(x, torch.Generator()), expected)
    assert torch.equal(pipe.eval_batch(x), expected)


def test_agnews_trims_padding_columns():
    x = torch.tensor([[5, 6, 1, 1, 1], [7, 1, 8, 1, 1], [9, 1, 1, 1, 1]])
    pipe = pipeline_for("agnews")
    for out in (pipe.train_batch(x), pipe.eval_batch(x)):
        assert out.dtype == torch.int64
        assert out.tolist() == [[5, 6, 1], [7, 1, 8], [9, 1, 1]]
    assert pipe.eval_batch(torch.ones(2, 4, dtype=torch.int32)).shape == (2, 1)
    assert pipe.eval_batch(torch.tensor([[0, 2, 3, 4]])).tolist() == [[0, 2, 3, 4]]


def test_pipeline_types_and_unknown_name():
    assert isinstance(pipeline_for("cifar10"), ImagePipeline)
    assert isinstance(pipeline_for("agnews"), TokenPipeline)
    assert all(isinstance(pipeline_for(n), InputPipeline) for n in ("digits", "clothing1m"))
    with pytest.raises(ValueError) as err:
        pipeline_for("mnist")
    for name in ("mnist", "digits", "cifar10", "cifar10n", "agnews", "clothing1m"):
        assert name in str(err.value)


# --- FedLSR's colour distortion, against torchvision's per-image functions ------------------


def test_rotate_hue_matches_torchvision_per_image():
    import torchvision.transforms.v2.functional as TF

    from data.transforms import rotate_hue

    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    shifts = torch.tensor([0.1, -0.15, 0.2, 0.0, -0.5])
    ours = rotate_hue(x, shifts)
    for i, shift in enumerate(shifts.tolist()):
        assert torch.allclose(ours[i], TF.adjust_hue(x[i], shift), atol=1e-5)


def test_colour_augment_matches_torchvision_with_the_same_draws():
    """Replays colour_augment's draws (flip, jitter mask, the four factors, grayscale mask, in
    that order) through torchvision's functions, image by image."""
    import torchvision.transforms.v2.functional as TF

    from data.transforms import colour_augment

    b = 12
    x = torch.rand(b, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ours = colour_augment(x, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    flip = torch.rand(b, generator=g) < 0.5
    jitter = torch.rand(b, generator=g) < 0.8
    factors = [torch.rand(b, generator=g) * 1.6 + 0.2 for _ in range(3)]
    hue = torch.rand(b, generator=g) * 0.4 - 0.2
    gray = torch.rand(b, generator=g) < 0.2
    assert jitter.any() and (~jitter).any() and gray.any()  # the draws cover every branch
    for i in range(b):
        image = TF.horizontal_flip(x[i]) if flip[i] else x[i]
        if jitter[i]:
            image = TF.adjust_brightness(image, float(factors[0][i]))
            image = TF.adjust_contrast(image, float(factors[1][i]))
            image = TF.adjust_saturation(image, float(factors[2][i]))
            image = TF.adjust_hue(image, float(hue[i]))
        if gray[i]:
            image = TF.rgb_to_grayscale(image, num_output_channels=3)
        assert torch.allclose(ours[i], image, atol=1e-5), i


def test_train_pair_shares_the_crop_and_normalises_both_views():
    pipeline = pipeline_for("cifar10")
    first, second = pipeline.train_pair(cifar_batch(8), torch.Generator().manual_seed(0))
    again = pipeline.train_batch(cifar_batch(8), torch.Generator().manual_seed(0))
    assert torch.equal(first, again)  # the first view is the training transform
    assert second.shape == first.shape and not torch.equal(first, second)
    digits = pipeline_for("digits")
    one, two = digits.train_pair(torch.full((4, 1, 8, 8), 8, dtype=torch.uint8))
    assert one.shape == two.shape == (4, 1, 8, 8) and float(one.max()) == 0.5


def test_token_batches_of_different_lengths_concatenate_with_padding():
    pipeline = pipeline_for("agnews")
    a = torch.tensor([[5, 6, 1], [7, 1, 1]])  # trimmed to length 2
    b = torch.tensor([[8, 9, 10]])
    joined = pipeline.concat([pipeline.train_batch(a), pipeline.train_batch(b)])
    assert joined.tolist() == [[5, 6, 1], [7, 1, 1], [8, 9, 10]]
    images = pipeline_for("digits")
    x = torch.zeros(2, 1, 8, 8)
    assert images.concat([x, x]).shape == (4, 1, 8, 8)
