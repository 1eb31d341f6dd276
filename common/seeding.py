"""One `seed` drives everything: each use draws from its own stream, derived from the seed.

Streams are keyed by a purpose and the indices that make the draw unique (round, partition id),
so the same config and seed give the same partition, noise, client sampling, model init and
shuffling in every process, whatever order the processes do their work in.
"""

from __future__ import annotations

import numpy as np
import torch

# Purposes; values are part of the derived seeds, so never renumber them.
PARTITION = 1
NOISE = 2
CLIENT_SAMPLING = 3
MODEL_INIT = 4
LOCAL_SHUFFLE = 5
EVALUATE_SAMPLING = 6
CLASS_LOSS = 7
FEDCORR_PASS = 8  # FedCorr's pre-processing: one client order per iteration
ATTACKERS = 9  # which clients attack (common.attacks)
ATTACK_NOISE = 10  # a gaussian attacker's noise, per round and partition
PEER_INIT = 11  # Co-teaching's second network's initial weights
FEDRN_PROBE = 12  # FedRN's random probe input, the same on every client


def numpy_rng(seed: int, purpose: int, *keys: int) -> np.random.Generator:
    """A numpy Generator for (seed, purpose, *keys)."""
    return np.random.default_rng(np.random.SeedSequence([seed, purpose, *keys]))


def torch_generator(seed: int, purpose: int, *keys: int) -> torch.Generator:
    """A CPU torch Generator for (seed, purpose, *keys)."""
    state = np.random.SeedSequence([seed, purpose, *keys]).generate_state(1, dtype=np.uint64)
    generator = torch.Generator()
    generator.manual_seed(int(state[0]) & ((1 << 63) - 1))
    return generator
