"""Post-processing of evaluation similarity matrices: dual softmax, inverted softmax, QB-Norm.

Every function takes ``sim [Q queries, N gallery]`` (rows are the queries: texts for t2v) as a
numpy array or a torch tensor and returns a new matrix of the same shape and kind (numpy in,
numpy out; a tensor stays on its device), float64 for float64 input and float32 otherwise. The
input is never modified. Rank it with ``clip4clip.metrics`` as usual.

Directions: the functions normalise over the query axis (dim 0) or per query row, so for
video-to-text retrieval pass the transposed matrix (``sim.T``: videos are then the queries and
texts the gallery; the querybank then holds videos) and rank the rows of the result. A matrix
post-processed for one direction is only meaningful for ranking in that direction: QB-Norm, for
instance, mixes normalised and raw rows, which ranks each row correctly but makes its columns
incomparable.

All three methods look beyond the query being ranked: dual softmax at the rest of the test
queries (so it needs the whole test query set at once, and scores depend on which other queries
are evaluated with it), inverted softmax and QB-Norm at a querybank of queries drawn from the
training split (``bank_sim [B bank queries, N gallery]``, the same gallery columns as ``sim``).

Similarities are expected to be cosine similarities (``engine.evaluation.similarity_matrix``
for two-tower models), which is what the default temperatures are for.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

__all__ = [
    "DSL_TEMPERATURE",
    "POSTPROCESSORS",
    "QB_BETA",
    "QB_K",
    "QUERYBANK_METHODS",
    "activation_set",
    "dual_softmax",
    "inverted_softmax",
    "qb_norm",
]

#: Multiplier of the cosine similarities inside the dual softmax. The official inference code
#: applies ``softmax(logits / 1)`` to CLIP4Clip's logits (logit scale ~100 x cosine), which is
#: ``softmax(100 * cosine)``.
DSL_TEMPERATURE = 100.0
#: QB-Norm's inverse temperature (the paper's and the official code's default).
QB_BETA = 20.0
#: QB-Norm's activation set: the top-k gallery items of every querybank query (official default).
QB_K = 1

# Rows processed at once when scanning a querybank (training-caption banks have ~10^5 rows).
_CHUNK = 4096


# ----------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _matrix(x: Any, name: str, no_rows: str = "") -> tuple[torch.Tensor, bool]:
    """(x as a 2-D float32/float64 tensor that shares memory with x where it can, True if x was
    not a tensor). Raises TypeError for non-real data, ValueError for a wrong shape or an empty
    or non-finite matrix (``no_rows`` is added to the message for a matrix without rows)."""
    from_numpy = not isinstance(x, torch.Tensor)
    if from_numpy:
        arr = np.asarray(x)
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float64 if arr.dtype == np.float64 else np.float32, copy=False)
        if not arr.flags.writeable:  # torch.from_numpy warns about read-only memory
            arr = arr.copy()
        t = torch.from_numpy(arr)
    else:
        if x.is_complex():
            raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
        t = x.detach()
        t = t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [queries, gallery] matrix, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} has no queries (shape {tuple(t.shape)}){no_rows}")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has no gallery columns (shape {tuple(t.shape)})")
    for start in range(0, t.shape[0], _CHUNK):  # chunks: a training-caption bank is large
        bad = ~torch.isfinite(t[start : start + _CHUNK])
        if bad.any():
            rest = range(start, t.shape[0], _CHUNK)
            total = sum(int((~torch.isfinite(t[s : s + _CHUNK])).sum()) for s in rest)
            i, j = (int(v) for v in bad.nonzero()[0])
            raise ValueError(
                f"{name} has {total} non-finite value(s) (NaN or inf), the first at [{start + i}, {j}] = "
                f"{float(t[start + i, j])}; post-processing needs finite similarities"
            )
    return t, from_numpy


_EMPTY_BANK = (": the querybank is empty; it holds the similarities of the querybank queries "
               "(e.g. training captions) to the test gallery")


def _bank(bank_sim: Any, sim: torch.Tensor) -> torch.Tensor:
    bank, _ = _matrix(bank_sim, "bank_sim", _EMPTY_BANK)
    if bank.shape[1] != sim.shape[1]:
        raise ValueError(
            f"bank_sim has {bank.shape[1]} gallery columns but sim has {sim.shape[1]}: the querybank "
            "must be scored against the same gallery (columns in the same order)"
        )
    return bank.to(device=sim.device, dtype=sim.dtype)


def _column_logsumexp(bank: torch.Tensor, beta: float) -> torch.Tensor:
    """[N] log sum_b exp(beta * bank[b, n]), accumulated over row chunks."""
    lse = torch.full((bank.shape[1],), -math.inf, dtype=bank.dtype, device=bank.device)
    for start in range(0, bank.shape[0], _CHUNK):
        part = torch.logsumexp(beta * bank[start : start + _CHUNK], dim=0)
        lse = torch.logaddexp(lse, part)
    return lse


def _output(t: torch.Tensor, from_numpy: bool, what: str):
    if not torch.isfinite(t).all():
        raise ValueError(
            f"{what} overflowed (exp of too large a value): the similarities look scaled (logits?); "
            "pass cosine similarities or lower the temperature"
        )
    return t.cpu().numpy() if from_numpy else t


# ----------------------------------------------------------------------------------------------
# Methods
# ----------------------------------------------------------------------------------------------


def dual_softmax(sim: Any, temperature: float = DSL_TEMPERATURE):
    """Dual softmax (DSL) at inference: each score weighted by its softmax over the queries.

    ``out[q, n] = sim[q, n] * softmax_q(temperature * sim[:, n])``, i.e.
    ``sim * softmax(sim * temperature, dim=0)``: a gallery item that many queries score highly
    (a hub) is shared out among them instead of winning them all.

    Source: Cheng et al. 2021, "Improving Video-Text Retrieval by Multi-Stream Corpus Alignment
    and Dual Softmax Loss" (CAMoE, arXiv 2109.04290). The official ``DSL.py`` (starmemda/CAMoE)
    computes ``sim * softmax(sim / temp, dim=0) * len(sim)`` on [text, video] logits; at
    inference the authors set temp = 1 (CAMoE issue #4), as in the CLIP4Clip-based evaluation
    code that applies it (``softmax(sim_matrix / 1, dim=0)`` on the logit-scaled matrix, and the
    same on ``sim_matrix.T`` for v2t). On cosine similarities that is ``temperature`` = the logit
    scale, ~100. The outer factors (logits instead of cosines, ``len(sim)``) are positive
    constants and change no rank, so they are left out.

    Needs the whole test query set at once (the softmax runs over it).

    Args:
        sim: [Q queries, N gallery] similarities (t2v: texts x videos; v2t: pass ``sim.T``).
        temperature: multiplier of ``sim`` inside the softmax (an inverse temperature), > 0.

    Returns:
        [Q, N], same kind as ``sim`` (see the module docstring).
    """
    temperature = _positive(temperature, "temperature")
    s, from_numpy = _matrix(sim, "sim")
    return _output(s * torch.softmax(s * temperature, dim=0), from_numpy, "dual_softmax")


def inverted_softmax(sim: Any, bank_sim: Any, beta: float = QB_BETA):
    """Inverted softmax (IS): every score normalised by how strongly a querybank retrieves that
    gallery item.

    ``out[q, n] = exp(beta * sim[q, n]) / sum_b exp(beta * bank_sim[b, n])``.

    Source: Smith et al. 2017, "Offline bilingual word vectors, orthogonal transformations and the
    inverted softmax" (ICLR); used as QB-Norm's IS baseline by Bogolin et al. 2022 (see
    ``qb_norm``). Computed as ``exp(beta * sim - logsumexp_b(beta * bank_sim))``.

    Args:
        sim: [Q queries, N gallery] test similarities (v2t: ``sim.T``).
        bank_sim: [B, N] similarities of the querybank queries (e.g. training captions) to the
            same N gallery items; B >= 1.
        beta: inverse temperature, > 0 (20 in the QB-Norm paper).

    Returns:
        [Q, N], same kind as ``sim``.
    """
    beta = _positive(beta, "beta")
    s, from_numpy = _matrix(sim, "sim")
    bank = _bank(bank_sim, s)
    lse = _column_logsumexp(bank, beta)
    return _output(torch.exp(beta * s - lse), from_numpy, "inverted_softmax")


def activation_set(bank_sim: Any, k: int = QB_K) -> np.ndarray:
    """Gallery items among the top-k of at least one querybank query: sorted int64 [<= N].

    Ties are broken towards the lower gallery index (a stable sort)."""
    bank, _ = _matrix(bank_sim, "bank_sim", _EMPTY_BANK)
    return _activation_set(bank, k)


def _activation_set(bank: torch.Tensor, k: int) -> np.ndarray:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__} {k!r}")
    k, n = int(k), bank.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the gallery size {n}, got {k}")
    active = torch.zeros(n, dtype=torch.bool, device=bank.device)
    for start in range(0, bank.shape[0], _CHUNK):
        top = torch.argsort(-bank[start : start + _CHUNK], dim=1, stable=True)[:, :k]
        active[top.reshape(-1)] = True
    return active.nonzero().reshape(-1).cpu().numpy()


def qb_norm(sim: Any, bank_sim: Any, beta: float = QB_BETA, k: int = QB_K):
    """QB-Norm with the dynamic inverted softmax (DIS).

    The activation set A is the gallery items that are the top-k of at least one querybank
    query. A test query whose top-1 gallery item lies in A is normalised as by
    ``inverted_softmax``: ``out[q, n] = exp(beta * sim[q, n]) / sum_b exp(beta * bank_sim[b, n])``;
    any other query keeps its raw scores ``out[q] = sim[q]`` (it does not compete for a hub, and
    normalising it could only hurt).

    Source: Bogolin et al., CVPR 2022, "Cross Modal Retrieval with Querybank Normalisation";
    checked against the official ``dynamic_inverted_softmax.py`` (ioanacroi/qb-norm: ``qb_norm``
    with ``get_retrieved_videos`` / ``get_index_to_normalize``, defaults beta=20, k=1). Unlike
    that code this does not write into the input, and ties in a top-1/top-k choice go to the
    lower gallery index.

    Args:
        sim: [Q queries, N gallery] test similarities (v2t: ``sim.T`` with a bank of videos).
        bank_sim: [B, N] querybank similarities (the paper draws the bank from training
            captions); B >= 1.
        beta: inverse temperature, > 0.
        k: size of each bank query's top list forming the activation set, 1 <= k <= N.

    Returns:
        [Q, N], same kind as ``sim``; rows that were normalised hold IS values, the others the
        raw similarities (compare within rows only).
    """
    beta = _positive(beta, "beta")
    s, from_numpy = _matrix(sim, "sim")
    bank = _bank(bank_sim, s)
    active = torch.zeros(s.shape[1], dtype=torch.bool, device=s.device)
    active[torch.as_tensor(_activation_set(bank, k), device=s.device)] = True
    normalise = active[torch.argmax(s, dim=1)]  # argmax: the first of tied maxima
    out = s.clone()
    if normalise.any():
        lse = _column_logsumexp(bank, beta)
        out[normalise] = torch.exp(beta * s[normalise] - lse)
    return _output(out, from_numpy, "qb_norm")


#: name -> function. ``dual_softmax(sim, temperature=)``; the others take ``(sim, bank_sim, ...)``.
POSTPROCESSORS: dict[str, Callable[..., Any]] = {
    "dual_softmax": dual_softmax,
    "inverted_softmax": inverted_softmax,
    "qb_norm": qb_norm,
}
#: The methods of ``POSTPROCESSORS`` that need a querybank (``bank_sim``).
QUERYBANK_METHODS = frozenset({"inverted_softmax", "qb_norm"})
