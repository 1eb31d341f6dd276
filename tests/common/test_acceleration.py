"""The training core's device options (common.acceleration): precision, memory layout, pinned
weight loading. The CPU tests run the same code a GPU runs; the `cuda` tests need a GPU and are
run by bench/gpu_check.py on a lent machine (none of this imports Flower)."""

from __future__ import annotations

import copy

import pytest
import torch

from client_app.training import _CAPTURED, CapturedStep, train_locally
from common.acceleration import DeviceOptions, load_weights
from common.evaluation import predict_logits
from common.protocol import LocalTraining
from data.client_data import ClientData
from data.transforms import pipeline_for
from models import build_model

SETTINGS = LocalTraining(local_epochs=1, batch_size=32, lr=0.01, momentum=0.9, weight_decay=5e-4)
needs_cuda = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"),
]


def client(device: str = "cpu", samples: int = 128) -> ClientData:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 256, (samples, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (samples,), generator=generator)
    return ClientData(0, torch.arange(samples).numpy(), inputs.to(device), labels.to(device),
                      labels.to(device), 10)  # fmt: skip


def one_round(options: DeviceOptions, device: str = "cpu", model=None):
    torch.manual_seed(3)
    model = options.prepare_model((model or build_model("lenet", 10)).to(device))
    stats = train_locally(
        model, client(device), pipeline_for("cifar10"), SETTINGS, torch.Generator().manual_seed(1),
        options,
    )  # fmt: skip
    return stats, model


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision='fp8' is not known; allowed: fp32, bf16"):
        DeviceOptions("fp8")


def test_bf16_autocast_trains_close_to_fp32_and_keeps_fp32_weights():
    fp32, _ = one_round(DeviceOptions())
    bf16, model = one_round(DeviceOptions("bf16"))
    assert bf16.num_steps == fp32.num_steps == 4
    assert abs(bf16.mean_loss - fp32.mean_loss) < 0.05 * fp32.mean_loss
    assert all(p.dtype == torch.float32 for p in model.parameters())
    logits = predict_logits(
        model, client().inputs, pipeline_for("cifar10"), 50, DeviceOptions("bf16")
    )
    assert logits.dtype == torch.float32 and logits.shape == (128, 10)


def test_channels_last_gives_the_same_training():
    plain, plain_model = one_round(DeviceOptions())
    nhwc, nhwc_model = one_round(DeviceOptions(channels_last=True))
    assert nhwc_model.body[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc.mean_loss == pytest.approx(plain.mean_loss, rel=1e-4)
    for a, b in zip(plain_model.parameters(), nhwc_model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_load_weights_copies_every_tensor_and_keeps_the_layout():
    source = build_model("resnet18", 10)
    target = DeviceOptions(channels_last=True).prepare_model(build_model("resnet18", 10))
    load_weights(target, source.state_dict())
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name
    first_conv = next(p for p in target.parameters() if p.dim() == 4)
    assert first_conv.is_contiguous(memory_format=torch.channels_last)
    state = source.state_dict()
    state.pop("head.bias")
    with pytest.raises(KeyError, match="missing \\['head.bias'\\]"):
        load_weights(target, state)


@needs_cuda[0]
@needs_cuda[1]
def test_the_same_seed_gives_the_same_first_round_on_cpu_and_gpu():
    """The augmentation and shuffling are drawn on the CPU, so only the kernels differ."""
    model = build_model("lenet", 10)
    cpu, cpu_model = one_round(DeviceOptions(), "cpu", copy.deepcopy(model))
    gpu, gpu_model = one_round(DeviceOptions(), "cuda", copy.deepcopy(model))
    assert gpu.mean_loss == pytest.approx(cpu.mean_loss, rel=1e-3)
    for a, b in zip(cpu_model.parameters(), gpu_model.parameters(), strict=True):
        assert torch.allclose(a, b.cpu(), atol=1e-3)


@needs_cuda[0]
@needs_cuda[1]
def test_pinned_loading_to_the_gpu_and_bf16_training_there():
    source = build_model("resnet18", 10)
    target = build_model("resnet18", 10).cuda()
    load_weights(target, source.state_dict())
    torch.cuda.synchronize()
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name].cpu(), tensor), name
    stats, model = one_round(DeviceOptions("bf16", channels_last=True), "cuda")
    assert stats.num_steps == 4 and torch.isfinite(torch.tensor(stats.mean_loss))


def test_cuda_graphs_are_a_no_op_off_cuda():
    plain, plain_model = one_round(DeviceOptions())
    graphs, graphs_model = one_round(DeviceOptions(cuda_graphs=True))
    assert graphs == plain
    for a, b in zip(plain_model.parameters(), graphs_model.parameters(), strict=True):
        assert torch.equal(a, b)


class SmallNet(torch.nn.Module):
    """Conv, BatchNorm, ReLU and a linear head: no pooling, whose CUDA backward (max-pool's,
    adaptive average pool's) adds with atomics and so differs between two eager runs."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Linear(8 * 15 * 15, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def two_clients_two_rounds(options: DeviceOptions, settings: LocalTraining, model_name: str):
    """Client A, then client B from A's result, then A again: the captured step is recorded in
    the first call (after its warm-up batches) and replayed by the next two."""
    torch.manual_seed(3)
    model = SmallNet() if model_name == "small" else build_model(model_name, 10)
    model = options.prepare_model(model.cuda())
    a, b = client("cuda", 160), client("cuda", 96)
    b.observed_labels[:48] = 0  # another class prior for the logit-adjusted loss
    losses = []
    for round_, data in enumerate((a, b, a)):
        generator = torch.Generator().manual_seed(round_)
        losses.append(
            train_locally(model, data, pipeline_for("cifar10"), settings, generator, options)
        )
    return losses, model


GRAPH_SETTINGS = LocalTraining(2, 32, 0.01, 0.9, 5e-4, local_loss="logit-adjusted",
                               max_grad_norm=5.0)  # fmt: skip


@pytest.fixture
def deterministic_cudnn():
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before


@needs_cuda[0]
@needs_cuda[1]
def test_cuda_graphs_train_as_the_eager_loop(deterministic_cudnn):
    """Same seed, same batches, deterministic kernels: the replayed graph gives the eager loop's
    losses and weights (momentum restarts at each call as with a fresh optimiser; clipping and
    the client's prior are inside the graph)."""
    eager, eager_model = two_clients_two_rounds(DeviceOptions(), GRAPH_SETTINGS, "small")
    graphs, graphs_model = two_clients_two_rounds(
        DeviceOptions(cuda_graphs=True), GRAPH_SETTINGS, "small"
    )
    step = _CAPTURED[graphs_model]
    assert step.graph is not None and step.warm_steps == CapturedStep.WARMUP_STEPS
    assert [s.num_steps for s in graphs] == [s.num_steps for s in eager] == [10, 6, 10]
    assert [s.mean_loss for s in graphs] == pytest.approx([s.mean_loss for s in eager], rel=1e-5)
    for a, b in zip(eager_model.state_dict().values(), graphs_model.state_dict().values(),
                    strict=True):  # fmt: skip
        assert torch.allclose(a.float(), b.float(), atol=1e-5), (a - b).abs().max()


@needs_cuda[0]
@needs_cuda[1]
def test_cuda_graphs_train_resnet18_in_bf16_and_channels_last():
    """ResNet-18's pooling backward is not deterministic on CUDA, so two eager runs differ too:
    here the graph's losses need only be close to the eager loop's."""
    options = DeviceOptions("bf16", channels_last=True, cudnn_benchmark=True)
    eager, _ = two_clients_two_rounds(options, GRAPH_SETTINGS, "resnet18")
    graphs, model = two_clients_two_rounds(
        DeviceOptions("bf16", True, True, cuda_graphs=True), GRAPH_SETTINGS, "resnet18"
    )
    assert _CAPTURED[model].graph is not None
    assert [s.mean_loss for s in graphs] == pytest.approx([s.mean_loss for s in eager], rel=0.03)
