"""The official CLIP4Clip multi-sentence (MSVD) evaluation layout, kept for parity checks.

CLIP4Clip scores MSVD from a padded [V videos, C captions, V videos] tensor and its v2t by
max-pooling each video's captions. The framework itself evaluates with
``metrics.retrieval_metrics_multi`` (every caption ranked, each video's best caption for v2t);
this test oracle reproduces the official form exactly so tests can prove the two agree where they
should (``tests/test_metrics.py``).
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from clip4clip.metrics import DEFAULT_CHUNK_SIZE, V2T_RULES, ranks, retrieval_metrics_multi, summarize

__all__ = ["multi_sentence_metrics"]

# The oracle's own input handling (it uses only the package's public functions: an oracle
# that shared the private helpers of the code it checks would share their mistakes too).


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _as_matrix(sim: Any, name: str, ndim: int) -> Any:
    """``sim`` as a numpy array or torch tensor of real numbers with ``ndim`` dimensions."""
    if not _is_torch(sim):
        sim = np.asarray(sim)
        if sim.dtype == object or np.iscomplexobj(sim):
            raise TypeError(f"{name} must hold real numbers, got dtype {sim.dtype}")
    elif sim.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {sim.dtype}")
    if sim.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(sim.shape)}")
    return sim


def _to_numpy(block: Any) -> np.ndarray:
    """float numpy copy of a block of a numpy array or tensor (half types widened exactly)."""
    if _is_torch(block):
        block = block.detach()
        if block.is_floating_point() and block.element_size() < 4:
            block = block.float()
        return block.cpu().numpy()
    return np.asarray(block)


def _list(idx: np.ndarray, shown: int = 10) -> str:
    idx = [int(i) for i in np.asarray(idx).ravel()]
    return "[" + ", ".join(map(str, idx[:shown])) + (", ..." if len(idx) > shown else "") + "]"


def _padding_mask(sim_tensor: Any) -> np.ndarray:
    """[V, C] bool, True where row ``sim_tensor[v, c, :]`` is padding.

    A row is padding when its ground-truth entry ``sim[v, c, v]`` is -inf or NaN
    (the official mask, except that +inf is kept as a real score). The whole row
    must then be -inf/NaN: a real caption whose own score is -inf is an error,
    not silently dropped.
    """
    v, c = sim_tensor.shape[:2]
    pad = np.zeros((v, c), dtype=bool)
    for i in range(v):
        block = _to_numpy(sim_tensor[i])  # [C, V] captions of video i
        if not np.issubdtype(block.dtype, np.floating):
            continue
        is_pad_value = np.isnan(block) | np.isneginf(block)
        row_pad = is_pad_value[:, i]
        partial = np.flatnonzero(row_pad & ~is_pad_value.all(axis=1))
        if partial.size:
            raise ValueError(
                f"sim_tensor[{i}, c, {i}] is -inf/NaN for caption(s) c={_list(partial)} "
                "but the rest of those rows is not: padding rows must be entirely "
                "-inf or NaN"
            )
        pad[i] = row_pad
    return pad


def multi_sentence_metrics(
    sim_tensor: Any,
    *,
    median: str = "mean_of_middle",
    v2t_rule: str = "best_caption",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, dict[str, float]]:
    """Metrics for the official CLIP4Clip multi-sentence (MSVD) layout.

    Args:
        sim_tensor: [V, C, V]; ``sim_tensor[v, c, w]`` is the similarity of
            caption c of video v to video w. Videos with fewer than C captions
            have padding rows ``sim_tensor[v, c, :]`` of -inf (or NaN), which are
            dropped. Every video must keep at least one caption.
        median: see :func:`summarize`. With ``"lower"`` t2v matches the official
            ``tensor_text_to_video_metrics`` (torch.median) in all cases; with
            the default they differ only when the two middle ranks differ.
        v2t_rule: ``"best_caption"`` (default): as
            :func:`retrieval_metrics_multi`, each video ranked against all valid
            captions. ``"max_pool"``: the official CLIP4Clip v2t
            (``compute_metrics(tensor_video_to_text_sim(sim))``): each video
            ranked against V caption groups, a group scoring the max over its
            captions.
        chunk_size: see :func:`ranks`.

    Returns:
        ``{"t2v": summary over valid captions, "v2t": summary over V videos}``.
        t2v ``R1, R5, R10, MdR, MnR, std`` correspond to the official ``R1, R5,
        R10, MedianR, MeanR, Std_Rank``.
    """
    if v2t_rule not in V2T_RULES:
        raise ValueError(f"v2t_rule must be one of {V2T_RULES}, got {v2t_rule!r}")
    sim_tensor = _as_matrix(sim_tensor, "sim_tensor", ndim=3)
    v, c, v2 = sim_tensor.shape
    if v != v2:
        raise ValueError(
            f"sim_tensor must be [V videos, C captions, V videos], got shape "
            f"{tuple(sim_tensor.shape)}"
        )
    pad = _padding_mask(sim_tensor)
    empty = np.flatnonzero(pad.all(axis=1))
    if empty.size:
        raise ValueError(
            f"{empty.size} video(s) have only padding rows (no caption): {_list(empty)}"
        )
    valid = ~pad
    # Texts in (video, caption) order; the order does not change any metric.
    text_video_index = np.nonzero(valid)[0]
    if _is_torch(sim_tensor):
        torch = sys.modules["torch"]
        texts = sim_tensor[torch.as_tensor(valid, device=sim_tensor.device)]
    else:
        texts = sim_tensor[valid]  # [T, V]
    out = retrieval_metrics_multi(
        texts, text_video_index, median=median, chunk_size=chunk_size
    )
    if v2t_rule == "max_pool":
        # group[g, w] = max over the valid captions of video g of sim[g, c, w];
        # padding rows are all -inf/NaN, so -inf replaces them in the max.
        pooled = np.full((v, v), -np.inf, dtype=np.float64)
        for g in range(v):
            block = _to_numpy(sim_tensor[g])[valid[g]]
            pooled[g] = block.max(axis=0)
        # Rows of pooled.T are videos, columns caption groups, gt on the diagonal.
        out["v2t"] = summarize(ranks(pooled.T, chunk_size=chunk_size), median=median)
    return out
