"""Do CUDA graphs (`cuda-graphs`) train as the eager loop? Needs a CUDA GPU; no Flower, no Ray.

    python3 bench/graphs_vs_eager.py

Trains the test suite's three client calls (tests/common/test_acceleration.py:
`two_clients_two_rounds`) three times per model, eagerly twice and once with the recorded step,
with cuDNN's default and its deterministic algorithms, and prints each run's mean losses and the
largest weight difference to the first eager run. Two eager runs differ as much as eager and
graph unless the kernels are deterministic; with deterministic cuDNN all three agree to the bit
(H200, 2026-11-29: docs/measurements/h200-2026-11-29-run3-graphs-vs-eager.log). ResNet-18's
adaptive-average-pool backward adds with atomics, so its runs differ without deterministic cuDNN.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "common")]

from test_acceleration import GRAPH_SETTINGS, two_clients_two_rounds  # noqa: E402

from common.acceleration import DeviceOptions  # noqa: E402


def main() -> int:
    if not torch.cuda.is_available():
        print("error: no CUDA GPU here: this compares CUDA graphs with the eager loop",
              file=sys.stderr)  # fmt: skip
        return 2
    runs = (("eager1", DeviceOptions()), ("eager2", DeviceOptions()),
            ("graph", DeviceOptions(cuda_graphs=True)))  # fmt: skip
    for deterministic in (False, True):
        torch.backends.cudnn.deterministic = deterministic
        for model in ("resnet18", "small"):
            losses, weights = {}, {}
            for label, options in runs:
                stats, trained = two_clients_two_rounds(options, GRAPH_SETTINGS, model)
                losses[label] = [s.mean_loss for s in stats]
                weights[label] = [v.detach().float().clone() for v in trained.state_dict().values()]

            def largest_difference(label: str, weights=weights) -> float:
                pairs = zip(weights["eager1"], weights[label], strict=True)
                return max((a - b).abs().max().item() for a, b in pairs)

            row = {"losses": losses, "w_eager1_eager2": largest_difference("eager2"),
                   "w_eager1_graph": largest_difference("graph")}  # fmt: skip
            print(model, deterministic, json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
