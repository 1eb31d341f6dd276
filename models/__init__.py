"""Models: every one maps inputs to logits, and exposes its feature extractor.

`model(x)` returns logits. `model.forward_with_features(x)` returns `(logits, features)` from one
forward pass, for methods that need the penultimate representation.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

MODEL_NAMES = ("digitsnet", "lenet", "resnet18", "fasttext", "resnet50")

# What input each model takes: ("image", (C, H, W)) with None for any size, or ("text", None).
MODEL_INPUTS: dict[str, tuple[str, tuple[int | None, ...] | None]] = {
    "digitsnet": ("image", (1, 8, 8)),
    "lenet": ("image", (3, 32, 32)),
    "resnet18": ("image", (3, 32, 32)),
    "fasttext": ("text", None),
    "resnet50": ("image", (3, None, None)),
}


class Classifier(nn.Module):
    """A feature extractor followed by a linear head; subclasses define `features`."""

    head: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # abstract: every concrete model below defines it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        return self.head(feats), feats

    def mixed_forward(self, x: torch.Tensor, partner: torch.Tensor, share: float) -> torch.Tensor:
        """Logits of mixup's blend `share * x + (1 - share) * x[partner]` (Zhang et al., ICLR 2018).

        x: a batch, (B, ...) float; partner: (B,) int64 row indices; share in [0, 1]. Models whose
        inputs cannot be blended (token ids) override this to blend a representation instead.
        """
        return self(share * x + (1 - share) * x[partner])


class DigitsNet(Classifier):
    """A small CNN for scikit-learn's 1x8x8 digits (the embedded CPU demo)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(),
        )
        self.head = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class LeNet5(Classifier):
    """LeNet-5 for 32x32 RGB (conv 6-16, fc 120-84): the CPU benchmark model.

    Pooling comes before each ReLU: max-pooling and ReLU commute, so the function is the usual
    conv-ReLU-pool LeNet, but ReLU touches 4x fewer values (7 % faster steps on a CPU).
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(6, 16, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
        )
        self.head = nn.Linear(84, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class BasicBlock(nn.Module):
    """Post-activation ResNet basic block (conv-BN-ReLU-conv-BN + shortcut, ReLU)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet18(Classifier):
    """ResNet-18, CIFAR variant (fidelity §7): 3x3 stem, no max-pool, widths 64-512, 512-d features.

    11,173,962 parameters for 10 classes, as in the authors' code.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        )
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)]
            in_planes = planes
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(512, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)


class FastText(Classifier):
    """The authors' "FastText" for AG News (fidelity §7): embedding mean over non-padding tokens,
    then Linear(256, 256) with no activation (the feature), then the class head.

    The authors return log-softmax; logits are equivalent for every softmax-based loss.
    """

    def __init__(self, num_classes: int, vocab_size: int, pad_index: int = 1, dim: int = 256):
        super().__init__()
        self.pad_index = pad_index
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=pad_index)
        self.fc = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, num_classes)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        keep = (tokens != self.pad_index).unsqueeze(-1).float()
        summed = (self.embedding(tokens) * keep).sum(1)
        return self.fc(summed / keep.sum(1).clamp_min(1.0))

    def mixed_forward(
        self, tokens: torch.Tensor, partner: torch.Tensor, share: float
    ) -> torch.Tensor:
        """Mixup for token ids, which cannot be blended: blend the sentence embeddings (the
        features) instead, "senMixup" (Guo et al., "Augmenting Data with Mixup for Sentence
        Classification", 2019). tokens: (B, L) int64; partner: (B,) int64; returns (B, classes).
        The model after the embedding mean is affine, so this equals blending the features."""
        feats = self.features(tokens)
        return self.head(share * feats + (1 - share) * feats[partner])


class ResNet50(Classifier):
    """torchvision's ResNet-50 (ImageNet layout) with a new head, for Clothing1M."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        backbone = torchvision.models.resnet50(weights=None)
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.head = nn.Linear(2048, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def build_model(
    name: str, num_classes: int, *, vocab_size: int = 0, pad_index: int = 1
) -> Classifier:
    """Build a freshly initialised model by name (seed torch first for a reproducible init)."""
    if name == "digitsnet":
        return DigitsNet(num_classes)
    if name == "lenet":
        return LeNet5(num_classes)
    if name == "resnet18":
        return CifarResNet18(num_classes)
    if name == "fasttext":
        if vocab_size < 2:
            raise ValueError("fasttext needs the dataset's vocabulary size (vocab_size)")
        return FastText(num_classes, vocab_size, pad_index)
    if name == "resnet50":
        return ResNet50(num_classes)
    raise ValueError(f"model '{name}' is not known; allowed: {', '.join(MODEL_NAMES)}")


def _fits(name: str, input_kind: str, input_shape: tuple[int, ...] | None) -> bool:
    kind, shape = MODEL_INPUTS[name]
    if kind != input_kind or shape is None:
        return kind == input_kind
    return (
        input_shape is not None
        and len(shape) == len(input_shape)
        and all(s is None or s == t for s, t in zip(shape, input_shape, strict=True))
    )


def check_model_fits(name: str, input_kind: str, input_shape: tuple[int, ...] | None) -> None:
    """Raise ValueError when a model cannot take a dataset's inputs (e.g. lenet on text)."""
    if not _fits(name, input_kind, input_shape):
        suitable = [m for m in MODEL_NAMES if _fits(m, input_kind, input_shape)]
        raise ValueError(
            f"model='{name}' takes {MODEL_INPUTS[name][0]} inputs of shape "
            f"{MODEL_INPUTS[name][1]}, but the dataset gives {input_kind} inputs of shape "
            f"{input_shape}; models that fit: {', '.join(suitable)}"
        )


PRETRAINED_MODELS = ("resnet50",)


def load_pretrained(model: Classifier, path) -> None:
    """Load torchvision's ImageNet weights of the backbone (a state dict file, e.g. torchvision's
    `resnet50-11ad3fa6.pth`) into `model`; its classification layer (`fc.*`) is left out, as
    the authors' Clothing1M notebook replaces it with a new 2048 -> 14 head (fidelity §6.6).
    ValueError naming the file when it cannot be read or its keys do not fit the backbone."""
    from pathlib import Path

    path = Path(path)
    if not hasattr(model, "backbone"):
        raise ValueError(f"pretrained weights fit only {', '.join(PRETRAINED_MODELS)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"pretrained-weights '{path}' cannot be read: {err}") from None
    if not isinstance(state, dict):
        raise ValueError(f"pretrained-weights '{path}' is not a state dict")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = model.backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        raise ValueError(
            f"pretrained-weights '{path}' does not fit torchvision's ResNet-50: missing "
            f"{missing[:3]}, unexpected {unexpected[:3]}, other shapes {sorted(shapes)[:3]}"
        )
    model.backbone.load_state_dict(state, strict=False)  # fc: the new head, not in the file
