"""Model aggregation rules as plain numpy: the geometric median used by MaskedOptim and a mean.

MaskedOptim aggregates every round (warm-up included) with the geometric median of the uploaded
models, computed by the authors' `RFA` function (`fl_components/fed.py`, fidelity §5.1):

* plain Weiszfeld iterations started at the mean of the points, no smoothing parameter, only a
  distance floor ``eps`` that is also the convergence tolerance (default 1e-5, 10 iterations);
* **per state_dict entry**: every weight tensor and every BN buffer (``num_batches_tracked``
  included) gets its own median, with its own Weiszfeld weights;
* **unweighted**: the clients' sample counts are ignored;
* when the step becomes shorter than ``eps`` the loop stops and keeps the *previous* iterate, not
  the new one (fidelity §11.3 B9).

`geometric_median_per_tensor` reproduces this. `geometric_median_whole_model` is the original RFA
formulation (one median of the concatenated model vectors), and optional client weights are
available for both; neither is the authors' default. Everything is computed in float64 and cast
back to the dtype of the inputs at the end: floating tensors are cast, integer tensors are
truncated toward zero, as torch does when a float tensor is copied into an int64 buffer on
``load_state_dict``.

No Flower and no torch here: tensors are numpy arrays, models are lists of arrays in a fixed order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_MAX_ITER = 10
DEFAULT_EPS = 1e-5


def _normalised_weights(weights: Sequence[float] | None, count: int) -> np.ndarray:
    """Weights as a float64 vector summing to 1 (None: uniform). Raises ValueError if invalid."""
    if weights is None:
        return np.full(count, 1.0 / count)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != count:
        raise ValueError(f"expected {count} weights (one per point/model), got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite")
    if np.any(w < 0):
        raise ValueError("weights must be non-negative")
    total = w.sum()
    if total <= 0:
        raise ValueError("weights must have a positive sum")
    return w / total


def _check_iteration_args(max_iter: int, eps: float) -> None:
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")


def _row_distances(stacked: np.ndarray, z: np.ndarray, buffer: np.ndarray) -> np.ndarray:
    """||stacked[i] - z|| for every row of `stacked` ([m, D] float64; z and `buffer`: [D]
    float64): equal to the bit to np.linalg.norm(stacked - z, axis=1), the same subtraction,
    square and pairwise sum of each row, done a row at a time in `buffer`. Why not the one-liner:
    it allocates three [m, D] temporaries per call (the difference, a conjugate copy, the
    square); on 5 fastText models (7.7M values each, one thread) 0.76 s -> 0.12 s per call, 10
    calls per geometric median."""
    squared = np.empty(stacked.shape[0])
    for i, row in enumerate(stacked):
        np.subtract(row, z, out=buffer)
        np.multiply(buffer, buffer, out=buffer)
        squared[i] = np.add.reduce(buffer)
    return np.sqrt(squared)


def _weiszfeld(
    stacked: np.ndarray, weights: np.ndarray, max_iter: int, eps: float
) -> tuple[np.ndarray, int]:
    """Weiszfeld on `stacked` ([m, D] float64) with normalised `weights` ([m]).

    Returns the median ([D]) and how many Weiszfeld updates were *accepted* (0 .. max_iter), i.e.
    how many times z was replaced; the final, rejected step of a converged run is not counted.
    """
    z = weights @ stacked
    accepted = 0
    buffer = np.empty(stacked.shape[1])
    for _ in range(max_iter):
        distances = _row_distances(stacked, z, buffer)
        alphas = weights / np.maximum(distances, eps)
        alphas /= alphas.sum()
        z_new = alphas @ stacked
        np.subtract(z_new, z, out=buffer)  # np.linalg.norm of a vector is sqrt(x.dot(x)) too
        if np.sqrt(buffer.dot(buffer)) < eps:
            break  # the authors keep the previous iterate (B9)
        z = z_new
        accepted += 1
    return z, accepted


def geometric_median(
    points: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    *,
    max_iter: int = DEFAULT_MAX_ITER,
    eps: float = DEFAULT_EPS,
) -> np.ndarray:
    """Approximate weighted geometric median of equally shaped arrays (Weiszfeld, as the authors).

    Each array is one point; distances are Frobenius norms over the whole array. In float64:
    z starts at the weighted mean (weights normalised; None means uniform, the authors' default);
    then at most `max_iter` times: d_i = ||X_i - z||, a_i = w_i / max(d_i, eps), a /= sum(a),
    z_new = sum_i a_i X_i; if ||z_new - z|| < eps the loop stops and z (not z_new) is returned,
    otherwise z = z_new. Returns a float64 array of the points' shape.
    """
    if len(points) == 0:
        raise ValueError("geometric_median needs at least one point")
    arrays = [np.asarray(p) for p in points]
    shape = arrays[0].shape
    for i, a in enumerate(arrays):
        if a.shape != shape:
            raise ValueError(f"point {i} has shape {a.shape}, expected {shape} like point 0")
        if not is_finite_model([a]):
            raise ValueError(f"point {i} holds non-finite values (NaN or inf)")
    _check_iteration_args(max_iter, eps)
    w = _normalised_weights(weights, len(arrays))
    stacked = np.stack([a.astype(np.float64, copy=False).reshape(-1) for a in arrays])
    median, _ = _weiszfeld(stacked, w, max_iter, eps)
    return median.reshape(shape)


def is_finite_model(model: Sequence[np.ndarray]) -> bool:
    """Whether every value of every tensor of `model` is finite (no NaN, no +-inf)."""
    return all(bool(np.isfinite(t).all()) for t in map(np.asarray, model) if t.dtype.kind in "fc")


def _check_models(models: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
    """Models as lists of arrays; all with the same number of tensors and the same shapes, and
    finite: one NaN would make a mean, a median's Weiszfeld weights or a distance score NaN
    for every model, so a rule refuses it (ValueError) and the strategy drops such uploads
    before aggregating (strategies.sampling)."""
    if len(models) == 0:
        raise ValueError("need at least one model")
    converted = [[np.asarray(t) for t in model] for model in models]
    for k, model in enumerate(converted):
        if not is_finite_model(model):
            raise ValueError(
                f"model {k} holds non-finite values (NaN or inf); drop it before aggregating"
            )
    reference = converted[0]
    for k, model in enumerate(converted):
        if len(model) != len(reference):
            raise ValueError(
                f"model {k} has {len(model)} tensors, expected {len(reference)} like model 0"
            )
        for j, (tensor, ref) in enumerate(zip(model, reference, strict=True)):
            if tensor.shape != ref.shape:
                raise ValueError(
                    f"tensor {j} of model {k} has shape {tensor.shape}, expected {ref.shape}"
                )
    return converted


def _output_dtype(tensors: Sequence[np.ndarray]) -> np.dtype:
    dtype = np.result_type(*tensors)
    if np.issubdtype(dtype, np.bool_) or not (
        np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)
    ):
        raise TypeError(f"cannot aggregate tensors of dtype {dtype}: need floating or integer")
    return dtype


def cast_back(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float64 -> `dtype`: floating is cast, integer truncated toward zero (as torch's copy)."""
    if np.issubdtype(dtype, np.integer):
        return np.trunc(values).astype(dtype)
    return values.astype(dtype)


def geometric_median_per_tensor(
    models: Sequence[Sequence[np.ndarray]],
    weights: Sequence[float] | None = None,
    *,
    max_iter: int = DEFAULT_MAX_ITER,
    eps: float = DEFAULT_EPS,
) -> list[np.ndarray]:
    """One geometric median per tensor index: the authors' `RFA` aggregation (fidelity §5.1).

    `models[k]` is client k's list of tensors, in the same order and shapes for every client (BN
    buffers included, as the authors aggregate the whole state_dict). Tensor j of the result is
    `geometric_median([m[j] for m in models], weights, ...)`, so every tensor gets its own Weiszfeld
    weights. Default: unweighted, 10 iterations, eps 1e-5, as the authors. Each output has the
    dtype of the inputs: floating tensors are cast back, integer tensors (``num_batches_tracked``)
    are truncated toward zero.
    """
    converted = _check_models(models)
    _check_iteration_args(max_iter, eps)
    w = _normalised_weights(weights, len(converted))
    result = []
    for j in range(len(converted[0])):
        tensors = [model[j] for model in converted]
        dtype = _output_dtype(tensors)
        stacked = np.stack([t.astype(np.float64, copy=False).reshape(-1) for t in tensors])
        median, _ = _weiszfeld(stacked, w, max_iter, eps)
        result.append(cast_back(median.reshape(tensors[0].shape), dtype))
    return result


def geometric_median_whole_model(
    models: Sequence[Sequence[np.ndarray]],
    weights: Sequence[float] | None = None,
    *,
    max_iter: int = DEFAULT_MAX_ITER,
    eps: float = DEFAULT_EPS,
) -> list[np.ndarray]:
    """One geometric median of whole model vectors (RFA's original formulation; not the default).

    Each client's tensors are flattened and concatenated into one vector, the Weiszfeld iterations
    (as in `geometric_median`) run once on those vectors, and the median is split back into tensors
    of the original shapes. Same dtype rule as `geometric_median_per_tensor`.
    """
    converted = _check_models(models)
    _check_iteration_args(max_iter, eps)
    w = _normalised_weights(weights, len(converted))
    reference = converted[0]
    dtypes = [_output_dtype([model[j] for model in converted]) for j in range(len(reference))]
    if not reference:
        return []
    stacked = np.stack(
        [
            np.concatenate([t.astype(np.float64, copy=False).reshape(-1) for t in model])
            for model in converted
        ]
    )
    median, _ = _weiszfeld(stacked, w, max_iter, eps)
    result = []
    offset = 0
    for ref, dtype in zip(reference, dtypes, strict=True):
        size = ref.size
        result.append(cast_back(median[offset : offset + size].reshape(ref.shape), dtype))
        offset += size
    return result


def weighted_mean(
    models: Sequence[Sequence[np.ndarray]], weights: Sequence[float] | None = None
) -> list[np.ndarray]:
    """Per-tensor weighted mean sum_k w_k X_k / sum_k w_k (FedAvg with w_k = n_k; None: uniform).

    Computed in float64; same dtype rule as `geometric_median_per_tensor`.
    """
    converted = _check_models(models)
    w = _normalised_weights(weights, len(converted))
    result = []
    for j in range(len(converted[0])):
        tensors = [model[j] for model in converted]
        dtype = _output_dtype(tensors)
        stacked = np.stack([t.astype(np.float64, copy=False).reshape(-1) for t in tensors])
        result.append(cast_back((w @ stacked).reshape(tensors[0].shape), dtype))
    return result


# --- The authors' aggregation baselines (FNBench `fl_components/fed.py`, fidelity §5.2) ------


def coordinate_lower_median(models: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Coordinate-wise median with torch.median's rule: for an even number of models, the lower
    of the two middle values, not their mean (the authors' `Median`, fidelity §11.3 B11).

    Every output value is one of the inputs, so each tensor keeps its dtype exactly."""
    converted = _check_models(models)
    middle = (len(converted) - 1) // 2
    result = []
    for j in range(len(converted[0])):
        tensors = [model[j] for model in converted]
        dtype = _output_dtype(tensors)
        stacked = np.stack([t.astype(dtype, copy=False) for t in tensors])
        result.append(np.sort(stacked, axis=0)[middle])
    return result


def _flattened(models: list[list[np.ndarray]]) -> np.ndarray:
    """[m, D] float64: each model's tensors (buffers included) concatenated, as the authors'
    `multi_vectorization` does."""
    return np.stack(
        [
            np.concatenate([t.astype(np.float64, copy=False).reshape(-1) for t in model])
            if model
            else np.zeros(0)
            for model in models
        ]
    )


def summed_squared_distances(models: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """s_i = sum_j ||x_i - x_j||^2 over all models j (whole-model vectors): the distance score
    of the authors' Krum and TrimmedMean variants."""
    flat = _flattened(_check_models(models))
    distances = np.zeros((len(flat), len(flat)))
    for i in range(len(flat)):  # pair by pair: exact and symmetric (no |a|^2 + |b|^2 - 2ab)
        for j in range(i + 1, len(flat)):
            difference = flat[i] - flat[j]
            distances[i, j] = distances[j, i] = difference @ difference
    return distances.sum(axis=1)


def krum_fnbench(models: Sequence[Sequence[np.ndarray]]) -> tuple[list[np.ndarray], int]:
    """The authors' Krum variant (fidelity §5.2, B10): the model with the smallest sum of squared
    distances to *all* models (a medoid; the textbook Krum sums over the m - f - 2 nearest
    only). Returns a copy of that model and its index (ties: the lowest index).

    Since sum_j ||x_i - x_j||^2 = m ||x_i - mean||^2 + const, this is the model nearest the mean.
    """
    converted = _check_models(models)
    chosen = int(np.argmin(summed_squared_distances(converted)))
    return [tensor.copy() for tensor in converted[chosen]], chosen


def trimmed_mean_fnbench(
    models: Sequence[Sequence[np.ndarray]], num_trimmed: int
) -> tuple[list[np.ndarray], list[int]]:
    """The authors' TrimmedMean variant (fidelity §5.2, B10): not coordinate-wise. Score each
    model by s_i = sum_j ||x_i - x_j||^2, take the lower median of the scores, keep the m - 2f
    models whose score is nearest to it, and return their uniform mean and their indices
    (sorted).

    `num_trimmed` is f = int(m * compromised-rate); m - 2f must be at least 1."""
    converted = _check_models(models)
    keep = len(converted) - 2 * num_trimmed
    if num_trimmed < 0 or keep < 1:
        raise ValueError(
            f"trimmed mean of {len(converted)} models with f={num_trimmed} keeps {keep} "
            "models; need 0 <= f and m - 2f >= 1"
        )
    scores = summed_squared_distances(converted)
    lower_median = np.sort(scores)[(len(scores) - 1) // 2]
    kept = sorted(np.argsort(np.abs(scores - lower_median), kind="stable")[:keep].tolist())
    return weighted_mean([converted[i] for i in kept]), kept


FEDEXP_EPS = 1e-3  # the FedExP paper's and FNBench's epsilon


def fedexp(
    global_model: Sequence[np.ndarray],
    models: Sequence[Sequence[np.ndarray]],
    weights: Sequence[float] | None = None,
    eps: float = FEDEXP_EPS,
) -> tuple[list[np.ndarray], float]:
    """FedExP (Jhunjhunwala et al., ICLR 2023; FNBench `FedExp`): extrapolate FedAvg's update.

    With client updates d_k = x_k - g and p_k the normalised weights (sample counts, as FedAvg):
    eta = max(1, sum_k p_k ||d_k||^2 / (2 (||sum_k p_k d_k||^2 + eps))) and the new global model is
    g + eta * sum_k p_k d_k. Norms run over the floating tensors; integer buffers
    (``num_batches_tracked``) are not extrapolated, they get the weighted mean. Returns the new
    model and eta. (FNBench measures d_k from the *initial* model rather than the current
    global one; this follows the paper.)"""
    converted = _check_models([list(global_model), *models])
    start, clients = converted[0], converted[1:]
    if not clients:
        raise ValueError("fedexp needs at least one client model")
    p = _normalised_weights(weights, len(clients))
    floating = [j for j, t in enumerate(start) if np.issubdtype(_output_dtype([t]), np.floating)]
    deltas = {
        j: np.stack([c[j].astype(np.float64) - start[j].astype(np.float64) for c in clients])
        for j in floating
    }
    mean_delta = {j: np.tensordot(p, d, axes=1) for j, d in deltas.items()}
    spread = sum(float(np.tensordot(p, (d**2).reshape(len(p), -1).sum(1), axes=1))
                 for d in deltas.values())  # fmt: skip
    mean_norm = sum(float((m**2).sum()) for m in mean_delta.values())
    eta = max(1.0, spread / (2 * (mean_norm + eps)))
    averaged = weighted_mean(clients, p)
    result = []
    for j, tensor in enumerate(start):
        if j in mean_delta:
            step = tensor.astype(np.float64) + eta * mean_delta[j]
            result.append(cast_back(step, _output_dtype([c[j] for c in converted])))
        else:
            result.append(averaged[j])
    return result, eta


def summed_tensor_distance(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """sum over floating tensors of ||a_j - b_j|| (Frobenius norm per tensor, then summed; integer
    buffers skipped): FedNoRo's model distance (FNBench `model_dist`)."""
    return float(
        sum(
            np.linalg.norm(x.astype(np.float64) - y.astype(np.float64))
            for x, y in zip(a, b, strict=True)
            if np.issubdtype(np.asarray(x).dtype, np.floating)
        )
    )


def distance_aware_weights(
    models: Sequence[Sequence[np.ndarray]], examples: Sequence[float], noisy: Sequence[bool]
) -> np.ndarray:
    """FedNoRo's distance-aware aggregation weights (DaAgg; used by FedNoRo and FedELC).

    d_k = 0 for a clean model and, for a noisy one, its smallest `summed_tensor_distance` to the
    round's clean models; d is divided by its maximum; w_k = n_k exp(-d_k), normalised. With no
    clean or no noisy model in the round (or all distances 0) this is FedAvg's n_k weighting."""
    converted = _check_models(models)
    if len(noisy) != len(converted) or len(examples) != len(converted):
        raise ValueError("need one example count and one noisy flag per model")
    weights = _normalised_weights(examples, len(converted))
    clean = [k for k, flag in enumerate(noisy) if not flag]
    distances = np.zeros(len(converted))
    if clean:
        for k, flag in enumerate(noisy):
            if flag:
                distances[k] = min(
                    summed_tensor_distance(converted[k], converted[c]) for c in clean
                )
    if distances.max() > 0:
        weights = weights * np.exp(-distances / distances.max())
    return weights / weights.sum()


def similarity_weighted_centroids(
    current: np.ndarray | None, uploads: Sequence[np.ndarray], examples: Sequence[int]
) -> np.ndarray:
    """RobustFL's server step (Yang et al., 2022; FNBench main_fed_LNL.py): each class's global
    centroid becomes the mean of the clients' centroids of that class weighted by their cosine
    similarity to the current global one, f_G[c] = sum_k s_kc f_k[c] / sum_k s_kc.

    current: (C, D) or None before the first round; uploads: K arrays (C, D); examples: K sample
    counts. Returns (C, D) float32. Departures, each where FNBench's formula is undefined or
    arbitrary: a negative similarity counts 0 (features without a final ReLU, fastText's, can
    point away), and a class whose weights sum to 0 keeps its current centroid; with no current
    centroids (FNBench: random numbers), the clients' non-zero rows (a zero row: a class the
    client did not hold) are averaged by sample count. Raises ValueError on no uploads or
    mismatched shapes."""
    if not uploads:
        raise ValueError("no centroids to aggregate")
    stacked = np.stack([np.asarray(u, dtype=np.float64) for u in uploads])  # (K, C, D)
    if stacked.ndim != 3 or len(examples) != len(uploads):
        raise ValueError(
            f"expected K (C, D) centroid arrays and K sample counts; got shape {stacked.shape} "
            f"and {len(examples)} counts"
        )
    if current is None:
        held = np.abs(stacked).sum(axis=2) > 0  # (K, C)
        weights = held * np.asarray(examples, dtype=np.float64)[:, None]
        total = weights.sum(axis=0)  # (C,)
        mean = (weights[:, :, None] * stacked).sum(axis=0) / np.maximum(total, 1e-12)[:, None]
        return mean.astype(np.float32)
    reference = np.asarray(current, dtype=np.float64)
    if reference.shape != stacked.shape[1:]:
        raise ValueError(f"current centroids {reference.shape}, uploads {stacked.shape[1:]}")
    norms = np.linalg.norm(stacked, axis=2) * np.linalg.norm(reference, axis=1)[None, :]
    cosine = (stacked * reference[None]).sum(axis=2) / np.maximum(norms, 1e-8)  # (K, C)
    weights = np.clip(cosine, 0.0, None)
    total = weights.sum(axis=0)
    mean = (weights[:, :, None] * stacked).sum(axis=0) / np.maximum(total, 1e-12)[:, None]
    return np.where((total > 0)[:, None], mean, reference).astype(np.float32)
