"""Tests for clip4clip.metrics: parity with the official CLIP4Clip metrics,
tie/NaN handling, multi-caption ranks and reporting helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clip4clip.metrics import (
    flatten,
    format_table,
    ranks,
    retrieval_metrics,
    retrieval_metrics_multi,
    summarize,
)
from oracle_metrics import multi_sentence_metrics

# The repo and the shared test data sit side by side (/work/main + /work/shared
# locally, /tmp/ci/main + /tmp/ci/shared in CI).
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE = SHARED / "testdata" / "reference"

TOL = 1e-9


@pytest.fixture(scope="module")
def reference() -> Path:
    needed = ["metrics_sim.npy", "metrics_multi_sim.npy", "metrics_golden.json"]
    missing = [n for n in needed if not (REFERENCE / n).is_file()]
    if missing:
        pytest.fail(
            f"reference test data missing: {missing} not found in {REFERENCE}. The "
            "shared folder must be checked out beside the repo (../shared)."
        )
    return REFERENCE


@pytest.fixture(scope="module")
def golden(reference: Path) -> dict:
    return json.loads((reference / "metrics_golden.json").read_text())


# --- Re-implementations of the official CLIP4Clip metrics (metrics.py) -------


def official_compute_metrics(x: np.ndarray) -> dict:
    """The official argsort logic: find the diagonal value in each sorted row."""
    sx = np.sort(-x, axis=1)
    d = np.diag(-x)[:, np.newaxis]
    ind = np.where(sx - d == 0)[1]
    return {
        "R1": float(np.sum(ind == 0)) * 100 / len(ind),
        "R5": float(np.sum(ind < 5)) * 100 / len(ind),
        "R10": float(np.sum(ind < 10)) * 100 / len(ind),
        "MedianR": np.median(ind) + 1,
        "MeanR": np.mean(ind) + 1,
    }


def official_tensor_text_to_video_metrics(sim: np.ndarray) -> dict:
    """The official multi-sentence t2v: double argsort, torch.median."""
    s = torch.tensor(sim)
    first = torch.argsort(s.permute(1, 0, 2), dim=-1, descending=True)
    second = torch.argsort(first, dim=-1, descending=False)
    rk = torch.flatten(torch.diagonal(second, dim1=1, dim2=2))
    diag = torch.flatten(torch.diagonal(s, dim1=0, dim2=2))
    valid = rk[~(torch.isinf(diag) | torch.isnan(diag))]
    return {
        "R1": float(torch.sum(valid < 1) * 100 / len(valid)),
        "R5": float(torch.sum(valid < 5) * 100 / len(valid)),
        "R10": float(torch.sum(valid < 10) * 100 / len(valid)),
        "MedianR": float(torch.median(valid + 1)),
        "MeanR": float(np.mean(valid.numpy() + 1)),
        "Std_Rank": float(np.std(valid.numpy() + 1)),
    }


def official_video_to_text_maxpool(sim: np.ndarray) -> dict:
    """The official MSVD v2t: compute_metrics(tensor_video_to_text_sim(sim))."""
    s = sim.copy()
    s[np.isnan(s)] = -np.inf
    return official_compute_metrics(s.max(axis=1).T)


def assert_matches_official(ours: dict, official: dict, recall_tol: float = TOL) -> None:
    recall = [("R1", "R1"), ("R5", "R5"), ("R10", "R10")]
    ranks_ = [("MdR", "MedianR"), ("MnR", "MeanR")]
    if "Std_Rank" in official:
        ranks_.append(("std", "Std_Rank"))
    for (k_ours, k_off), tol in [(p, recall_tol) for p in recall] + [(p, TOL) for p in ranks_]:
        assert abs(ours[k_ours] - float(official[k_off])) <= tol, (k_ours, ours, official)


def random_multi(rng: np.random.Generator, v: int, c: int) -> np.ndarray:
    """[V, C, V] continuous random sims with a random number of captions per video."""
    sim = rng.standard_normal((v, c, v))
    n_caps = rng.integers(1, c + 1, size=v)
    for i in range(v):
        sim[i, n_caps[i]:, :] = -np.inf
    return sim


# --- Golden files --------------------------------------------------------------


def test_golden_t2v_v2t(reference: Path, golden: dict) -> None:
    sim = np.load(reference / "metrics_sim.npy")
    out = retrieval_metrics(sim)  # compute_metrics uses np.median: the default
    assert_matches_official(out["t2v"], golden["t2v"])
    assert_matches_official(out["v2t"], golden["v2t"])
    assert out["t2v"]["num_queries"] == out["v2t"]["num_queries"] == sim.shape[0]


def test_golden_multi_sentence_t2v(reference: Path, golden: dict) -> None:
    sim = np.load(reference / "metrics_multi_sim.npy")
    off = golden["multi_sentence_t2v"]
    # The official function uses torch.median (lower middle); this file has
    # equal middle ranks, so both conventions reproduce it.
    for median in ("lower", "mean_of_middle"):
        out = multi_sentence_metrics(sim, median=median)
        assert_matches_official(out["t2v"], off)
    assert out["t2v"]["num_queries"] == int(np.isfinite(sim[:, :, 0]).sum())
    # Torch input gives the same numbers.
    out_t = multi_sentence_metrics(torch.from_numpy(sim), median="lower")
    assert_matches_official(out_t["t2v"], off)


def test_golden_multi_sentence_v2t_max_pool(reference: Path) -> None:
    sim = np.load(reference / "metrics_multi_sim.npy")
    out = multi_sentence_metrics(sim, v2t_rule="max_pool")
    assert_matches_official(out["v2t"], official_video_to_text_maxpool(sim))


# --- Parity beyond the golden files -------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_parity_with_official_compute_metrics_random(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 120))
    sim = rng.standard_normal((n, n)) + 2.0 * rng.random() * np.eye(n)
    out = retrieval_metrics(sim)
    assert_matches_official(out["t2v"], official_compute_metrics(sim))
    assert_matches_official(out["v2t"], official_compute_metrics(sim.T))


@pytest.mark.parametrize("seed", range(4))
def test_parity_with_official_multi_sentence_random(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    sim = random_multi(rng, v=int(rng.integers(4, 40)), c=int(rng.integers(1, 6)))
    out = multi_sentence_metrics(sim, median="lower", v2t_rule="max_pool")
    # The official R@K is count * 100 / n in torch's default float32, so it is
    # only float32-accurate (the golden file's 160 queries happen to give
    # float32-exact values); ours is float64.
    off = official_tensor_text_to_video_metrics(sim)
    assert_matches_official(out["t2v"], off, recall_tol=1e-5)
    assert_matches_official(out["v2t"], official_video_to_text_maxpool(sim))


def test_median_conventions_differ_on_even_counts() -> None:
    r = np.array([1, 2, 3, 4])
    assert summarize(r)["MdR"] == 2.5 == float(np.median(r))
    assert summarize(r, median="lower")["MdR"] == 2.0 == float(torch.median(torch.tensor(r)))
    assert summarize(np.array([1, 5, 9]), median="lower")["MdR"] == 5.0
    with pytest.raises(ValueError, match="median"):
        summarize(r, median="upper")


def test_chunking_and_torch_inputs_agree() -> None:
    rng = np.random.default_rng(7)
    sim = rng.standard_normal((50, 50)).astype(np.float32)
    ref = ranks(sim)
    for chunk in (1, 7, 50, 4096):
        np.testing.assert_array_equal(ranks(sim, chunk_size=chunk), ref)
    np.testing.assert_array_equal(ranks(torch.from_numpy(sim), chunk_size=7), ref)
    # float16 stays exact (ties kept, not broken by a lossy cast)
    half = torch.from_numpy(sim).half()
    np.testing.assert_array_equal(ranks(half), ranks(half.float().numpy()))
    assert retrieval_metrics(torch.from_numpy(sim)) == retrieval_metrics(sim)
    out = retrieval_metrics(sim)
    assert all(type(v) is float for d in out.values() for k, v in d.items() if k != "num_queries")
    with pytest.raises(ValueError, match="chunk_size"):
        ranks(sim, chunk_size=0)


def test_rectangular_with_gt_index() -> None:
    sim = np.array([[0.1, 0.9, 0.3], [0.8, 0.2, 0.5]])
    np.testing.assert_array_equal(ranks(sim, gt_index=[1, 2]), [1, 2])
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        ranks(sim)
    with pytest.raises(ValueError, match="gt_index"):
        ranks(sim, gt_index=[0, 3])
    with pytest.raises(ValueError, match="gt_index"):
        ranks(sim, gt_index=[0])


# --- Ties, invalid values ------------------------------------------------------


def test_constant_matrix_gets_worst_rank() -> None:
    n = 8
    r = ranks(np.full((n, n), 0.5))
    np.testing.assert_array_equal(r, np.full(n, n))
    out = retrieval_metrics(np.zeros((n, n)))
    assert out["t2v"]["R1"] == 0.0 and out["t2v"]["MdR"] == n and out["v2t"]["MnR"] == n


def test_tie_with_one_other_item_gives_rank_2() -> None:
    sim = np.eye(4)
    sim[0, 2] = 1.0  # item 2 ties with the ground truth of query 0
    np.testing.assert_array_equal(ranks(sim), [2, 1, 1, 1])


def test_infinities_are_ordinary_values() -> None:
    sim = np.array([[np.inf, 1.0, -np.inf], [np.inf, 2.0, 0.0], [0.0, 1.0, 3.0]])
    np.testing.assert_array_equal(ranks(sim), [1, 2, 1])
    sim[0, 1] = np.inf  # +inf ties with +inf
    assert ranks(sim)[0] == 2


def test_nan_raises_with_count() -> None:
    sim = np.eye(5)
    sim[1, 3] = sim[4, 0] = np.nan
    with pytest.raises(ValueError, match="2 NaN"):
        ranks(sim)
    with pytest.raises(ValueError, match="2 NaN"):
        retrieval_metrics(torch.from_numpy(sim))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics_multi(sim, np.arange(5))


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        retrieval_metrics(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="dimensions"):
        ranks(np.zeros(4))
    with pytest.raises(ValueError, match="text_video_index"):
        retrieval_metrics_multi(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match=r"\[V videos, C captions, V videos\]"):
        multi_sentence_metrics(np.zeros((3, 2, 4)))


def test_ground_truth_neg_inf_raises() -> None:
    sim = np.eye(3)
    sim[1, 1] = -np.inf
    with pytest.raises(ValueError, match=r"-inf for 1 query.*\[1\]"):
        ranks(sim)


# --- Perfect / worst ----------------------------------------------------------


def test_identity_is_perfect() -> None:
    out = retrieval_metrics(np.eye(10))
    for d in ("t2v", "v2t"):
        assert out[d]["R1"] == out[d]["R5"] == out[d]["R10"] == 100.0
        assert out[d]["MdR"] == 1.0 and out[d]["MnR"] == 1.0


def test_reversed_is_worst() -> None:
    n = 20
    out = retrieval_metrics(-np.eye(n) + 0.01 * np.arange(n))  # gt strictly lowest
    assert out["t2v"]["R1"] == out["t2v"]["R10"] == 0.0
    assert out["t2v"]["MdR"] == out["t2v"]["MnR"] == n
    np.testing.assert_array_equal(ranks(-np.eye(n)), np.full(n, n))


# --- Multi-caption ------------------------------------------------------------


def test_multi_caption_hand_built() -> None:
    # 5 texts, 3 videos: texts 0,1 -> video 0, texts 2,3 -> video 1, text 4 -> video 2
    sim = np.array(
        [
            [0.9, 0.1, 0.2],  # t0 (v0): rank 1
            [0.3, 0.5, 0.4],  # t1 (v0): rank 3
            [0.1, 0.6, 0.8],  # t2 (v1): rank 2
            [0.2, 0.7, 0.0],  # t3 (v1): rank 1
            [0.4, 0.3, 0.2],  # t4 (v2): rank 3
        ]
    )
    idx = np.array([0, 0, 1, 1, 2])
    np.testing.assert_array_equal(ranks(sim, idx), [1, 3, 2, 1, 3])
    out = retrieval_metrics_multi(sim, idx)
    assert out["t2v"]["num_queries"] == 5
    assert out["t2v"]["R1"] == 40.0 and out["t2v"]["MdR"] == 2.0 and out["t2v"]["MnR"] == 2.0
    # v2t, best own caption vs captions of other videos:
    #  v0: best own 0.9, others >= 0.9: none          -> rank 1
    #  v1: best own 0.7, others >= 0.7: none          -> rank 1
    #  v2: own 0.2 (t4), others >= 0.2: t0, t1, t2     -> rank 4
    v2t = out["v2t"]
    assert v2t["num_queries"] == 3
    assert v2t["MnR"] == 2.0 and v2t["MdR"] == 1.0
    assert v2t["R1"] == pytest.approx(200 / 3) and v2t["R5"] == 100.0


def test_multi_caption_own_ties_do_not_count() -> None:
    # Two captions of video 0 tie at its best score: still rank 1.
    sim = np.array([[0.9, 0.0], [0.9, 0.0], [0.1, 0.5]])
    out = retrieval_metrics_multi(sim, [0, 0, 1])
    assert out["v2t"]["MnR"] == 1.0
    # A wrong caption tied with the best own one counts (pessimistic).
    sim[2, 0] = 0.9
    out = retrieval_metrics_multi(sim, [0, 0, 1])
    assert out["v2t"]["R1"] == 50.0


def test_multi_caption_one_per_video_equals_square() -> None:
    rng = np.random.default_rng(3)
    sim = rng.standard_normal((30, 30))
    assert retrieval_metrics_multi(sim, np.arange(30)) == retrieval_metrics(sim)


def test_multi_caption_video_without_caption_raises() -> None:
    with pytest.raises(ValueError, match=r"no caption.*\[1, 3\]"):
        retrieval_metrics_multi(np.zeros((3, 4)), [0, 2, 2])


def test_multi_sentence_layout_matches_general_form() -> None:
    rng = np.random.default_rng(11)
    sim = random_multi(rng, v=12, c=4)
    valid = np.isfinite(sim[:, :, 0])
    texts, idx = sim[valid], np.nonzero(valid)[0]
    assert multi_sentence_metrics(sim) == retrieval_metrics_multi(texts, idx)
    # NaN padding works like -inf padding
    sim_nan = sim.copy()
    sim_nan[np.isinf(sim_nan)] = np.nan
    assert multi_sentence_metrics(sim_nan) == multi_sentence_metrics(sim)


def test_multi_sentence_invalid_padding_raises() -> None:
    sim = np.random.default_rng(0).standard_normal((3, 2, 3))
    sim[1, :, :] = -np.inf  # video 1 has no caption at all
    with pytest.raises(ValueError, match=r"only padding.*\[1\]"):
        multi_sentence_metrics(sim)
    sim = np.random.default_rng(0).standard_normal((3, 2, 3))
    sim[2, 1, 2] = -np.inf  # gt -inf but the row is not padding
    with pytest.raises(ValueError, match="padding rows must be entirely"):
        multi_sentence_metrics(sim)


# --- Reporting ---------------------------------------------------------------


def test_format_table_and_flatten() -> None:
    out = retrieval_metrics(np.eye(4))
    table = format_table(out)
    lines = table.splitlines()
    assert len(lines) == 3
    assert lines[0].split() == ["R@1", "R@5", "R@10", "MdR", "MnR"]
    assert lines[1].split() == ["t2v", "100.0", "100.0", "100.0", "1.0", "1.0"]
    assert lines[2].startswith("v2t")
    assert len({len(line) for line in lines}) == 1  # fixed width

    flat = flatten(out)
    assert flat["t2v/R1"] == 100.0 and flat["v2t/MnR"] == 1.0
    assert all(type(v) is float for v in flat.values())
    assert set(flatten(out, prefix="val/")) == {f"val/{k}" for k in flat}
    assert set(flatten(out, prefix="val")) == {f"val/{k}" for k in flat}
    with pytest.raises(TypeError, match="t2v/name"):
        flatten({"t2v": {"name": "x"}})
