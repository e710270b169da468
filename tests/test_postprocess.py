"""clip4clip.postprocess: dual softmax, inverted softmax and QB-Norm on similarity matrices.

Hand-computed cases use similarities that are logarithms of small integers with temperature /
beta 1, so every exp() is an integer and the expected values can be written out."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from clip4clip.metrics import ranks, retrieval_metrics, retrieval_metrics_multi, summarize
from clip4clip.postprocess import (
    POSTPROCESSORS,
    QUERYBANK_METHODS,
    activation_set,
    dual_softmax,
    inverted_softmax,
    qb_norm,
)

ln = math.log


def _official_qb_norm(train_test: np.ndarray, test_test: np.ndarray, k: int = 1, beta: float = 20.0) -> np.ndarray:
    """ioanacroi/qb-norm ``dynamic_inverted_softmax.qb_norm`` transcribed (on a copy: the
    original writes into its input)."""
    test_test = test_test.copy()
    argm = np.argsort(-train_test, axis=1)
    retrieved_videos = np.unique(argm[:, :k].reshape(-1))
    test_test_normalized = test_test
    train_test = np.exp(train_test * beta)
    test_test = np.exp(test_test * beta)
    normalizing_sum = np.sum(train_test, axis=0)
    argm = np.argsort(-test_test, axis=1)[:, 0]
    index_for_normalizing = np.nonzero(np.array([x in retrieved_videos for x in argm]))
    test_test_normalized[index_for_normalizing, :] = np.divide(test_test[index_for_normalizing, :], normalizing_sum)
    return test_test_normalized


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ----------------------------------------------------------------------------------------------
# Hand-computed values
# ----------------------------------------------------------------------------------------------


def test_dual_softmax_by_hand():
    # exp(sim) = A, so the softmax of column n over the queries is A[:, n] / sum(A[:, n]);
    # column sums 8, 4, 8.
    a = np.array([[4, 1, 2], [2, 2, 1], [2, 1, 5]], dtype=np.float64)
    out = dual_softmax(np.log(a), temperature=1.0)
    expected = np.array([
        [ln(4) * 4 / 8, ln(1) * 1 / 4, ln(2) * 2 / 8],
        [ln(2) * 2 / 8, ln(2) * 2 / 4, ln(1) * 1 / 8],
        [ln(2) * 2 / 8, ln(1) * 1 / 4, ln(5) * 5 / 8],
    ])
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_dual_softmax_default_temperature_is_the_logit_scale():
    sim = np.array([[0.30, 0.28], [0.31, 0.10]])
    out = dual_softmax(sim)
    col0 = np.exp(100 * sim[:, 0]) / np.exp(100 * sim[:, 0]).sum()
    col1 = np.exp(100 * sim[:, 1]) / np.exp(100 * sim[:, 1]).sum()
    np.testing.assert_allclose(out, sim * np.stack([col0, col1], axis=1), rtol=1e-12)
    # Video 0 is the best match of both queries; the softmax over queries gives it to query 1,
    # and query 0 now retrieves video 1.
    assert sim.argmax(axis=1).tolist() == [0, 0] and out.argmax(axis=1).tolist() == [1, 0]


def test_inverted_softmax_by_hand():
    # exp(bank) column sums: 2, 4, 8 (video 2 is a hub of the querybank).
    bank = np.log([[1.0, 1.0, 6.0], [1.0, 3.0, 2.0]])
    sim = np.log([[4.0, 4.0, 4.0], [1.0, 6.0, 2.0], [2.0, 2.0, 8.0]])
    out = inverted_softmax(sim, bank, beta=1.0)
    expected = np.array([[4 / 2, 4 / 4, 4 / 8], [1 / 2, 6 / 4, 2 / 8], [2 / 2, 2 / 4, 8 / 8]])
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_qb_norm_normalises_only_queries_whose_top1_is_activated():
    bank = np.log([[1.0, 1.0, 6.0], [1.0, 3.0, 2.0]])  # top-1 per bank row: 2, 1 -> A = {1, 2}
    sim = np.log([[1.0, 2.0, 6.0], [5.0, 1.0, 2.0], [1.0, 6.0, 2.0]])  # top-1: 2, 0, 1
    assert activation_set(bank, k=1).tolist() == [1, 2]
    out = qb_norm(sim, bank, beta=1.0, k=1)
    expected = np.array([
        [1 / 2, 2 / 4, 6 / 8],  # normalised (exp(sim) / column sums 2, 4, 8)
        list(np.log([5.0, 1.0, 2.0])),  # top-1 video 0 is not activated: raw scores
        [1 / 2, 6 / 4, 2 / 8],  # normalised
    ])
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    # k=2: bank row 0 = (1, 1, 6) adds the lower of its tied items, video 0; every video is then
    # activated and QB-Norm is the inverted softmax.
    assert activation_set(bank, k=2).tolist() == [0, 1, 2]
    np.testing.assert_allclose(qb_norm(sim, bank, beta=1.0, k=2), inverted_softmax(sim, bank, beta=1.0), rtol=1e-12)


def test_defaults_are_the_papers():
    assert inspect.signature(dual_softmax).parameters["temperature"].default == 100.0
    assert inspect.signature(inverted_softmax).parameters["beta"].default == 20.0
    qb = inspect.signature(qb_norm).parameters
    assert qb["beta"].default == 20.0 and qb["k"].default == 1
    assert set(POSTPROCESSORS) == {"dual_softmax", "inverted_softmax", "qb_norm"}
    assert POSTPROCESSORS["qb_norm"] is qb_norm and QUERYBANK_METHODS == {"inverted_softmax", "qb_norm"}


def test_qb_norm_equals_the_official_code(rng):
    sim = rng.uniform(-0.2, 0.6, size=(40, 25))
    bank = rng.uniform(-0.2, 0.6, size=(30, 25))
    bank[:, 3] += 0.5  # a hub of the bank: most of the activation set
    sim[:20, 3] += 0.5  # the queries that retrieve it are normalised, most others not
    for k in (1, 3):
        ours = qb_norm(sim, bank, k=k)
        np.testing.assert_allclose(ours, _official_qb_norm(bank, sim, k=k), rtol=1e-10)
        if k == 1:
            normalised = (ours != sim).any(axis=1)
            assert 0 < normalised.sum() < len(sim)


# ----------------------------------------------------------------------------------------------
# Both directions, metrics
# ----------------------------------------------------------------------------------------------


def _direct_ranks(scores: np.ndarray, gt: np.ndarray) -> np.ndarray:
    return np.array([(row >= row[g]).sum() for row, g in zip(scores, gt)])


def test_metrics_on_postprocessed_matrices_equal_a_direct_recomputation(rng):
    n = 12
    sim = rng.normal(0.2, 0.1, size=(n, n)) + 0.15 * np.eye(n)
    bank = rng.normal(0.2, 0.1, size=(30, n))
    bank_v2t = rng.normal(0.2, 0.1, size=(20, n))  # a bank of videos scored against the test texts
    direct = {
        "dual_softmax": lambda s, b: s * np.exp(100 * s) / np.exp(100 * s).sum(axis=0, keepdims=True),
        "inverted_softmax": lambda s, b: np.exp(20 * s) / np.exp(20 * b).sum(axis=0),
        "qb_norm": lambda s, b: _official_qb_norm(b, s),
    }
    gt = np.arange(n)
    for name, fn in POSTPROCESSORS.items():
        args = {"dual_softmax": ()}.get(name)
        t2v = fn(sim) if args is not None else fn(sim, bank)
        v2t = fn(sim.T) if args is not None else fn(sim.T, bank_v2t)
        want_t2v = _direct_ranks(direct[name](sim, bank), gt)
        want_v2t = _direct_ranks(direct[name](sim.T, bank_v2t), gt)
        assert ranks(t2v).tolist() == want_t2v.tolist(), name
        assert ranks(v2t).tolist() == want_v2t.tolist(), name
        assert retrieval_metrics(t2v)["t2v"] == summarize(want_t2v), name
        assert retrieval_metrics(v2t)["t2v"] == summarize(want_v2t), name


def test_multi_caption_t2v_uses_every_caption_as_a_query(rng):
    video_of_text = np.repeat(np.arange(4), 3)  # 12 captions, 4 videos
    sim = rng.normal(0.2, 0.1, size=(12, 4)) + 0.2 * (video_of_text[:, None] == np.arange(4))
    out = dual_softmax(sim)
    want = sim * np.exp(100 * sim) / np.exp(100 * sim).sum(axis=0)  # softmax over all 12 captions
    np.testing.assert_allclose(out, want, rtol=1e-12)
    assert retrieval_metrics_multi(out, video_of_text)["t2v"] == summarize(_direct_ranks(want, video_of_text))


# ----------------------------------------------------------------------------------------------
# Inputs: kinds, dtypes, never modified; argument errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(POSTPROCESSORS))
def test_input_is_not_modified_and_kind_is_kept(name, rng):
    fn = POSTPROCESSORS[name]
    sim = rng.normal(0.2, 0.1, size=(6, 5))
    bank = rng.normal(0.2, 0.1, size=(8, 5))
    bank[:, 0] += 1  # every query's top-1 in the activation set matters for qb_norm
    call = (lambda s, b: fn(s)) if name == "dual_softmax" else fn
    for make in (np.array, torch.tensor):
        s, b = make(sim.copy()), make(bank.copy())
        out = call(s, b)
        assert type(out) is type(s) and out.shape == (6, 5)
        assert np.array_equal(np.asarray(s), sim) and np.array_equal(np.asarray(b), bank)
        if isinstance(s, np.ndarray):
            assert not np.shares_memory(out, s) and out.dtype == np.float64
        else:
            assert out.data_ptr() != s.data_ptr() and out.dtype == torch.float64
    ro = sim.copy()
    ro.flags.writeable = False
    np.testing.assert_allclose(call(ro, bank), call(sim, bank))
    half = call(torch.tensor(sim, dtype=torch.float16), torch.tensor(bank, dtype=torch.float16))
    assert half.dtype == torch.float32


def test_bad_arguments_are_named():
    sim = np.full((3, 3), 0.1)
    bank = np.full((4, 3), 0.1)
    with pytest.raises(ValueError, match=r"sim must be a 2-D \[queries, gallery\] matrix, got shape \(3,\)"):
        dual_softmax(np.ones(3))
    with pytest.raises(ValueError, match=r"sim has no queries"):
        dual_softmax(np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"bank_sim has no queries \(shape \(0, 3\)\): the querybank is empty"):
        qb_norm(sim, np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"the querybank is empty"):
        inverted_softmax(sim, np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"bank_sim has 4 gallery columns but sim has 3"):
        qb_norm(sim, np.ones((2, 4)))
    nan = sim.copy()
    nan[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"sim has 1 non-finite value\(s\) \(NaN or inf\), the first at \[1, 2\]"):
        dual_softmax(nan)
    inf = bank.copy()
    inf[[0, 3], 0] = np.inf
    with pytest.raises(ValueError, match=r"bank_sim has 2 non-finite value\(s\).*first at \[0, 0\]"):
        inverted_softmax(sim, inf)
    with pytest.raises(ValueError, match=r"k must be between 1 and the gallery size 3, got 4"):
        qb_norm(sim, bank, k=4)
    with pytest.raises(ValueError, match=r"k must be between 1 and the gallery size 3, got 0"):
        qb_norm(sim, bank, k=0)
    with pytest.raises(TypeError, match=r"k must be an int, got float 1.5"):
        qb_norm(sim, bank, k=1.5)
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"beta must be a positive finite number"):
            qb_norm(sim, bank, beta=bad)
        with pytest.raises(ValueError, match=r"temperature must be a positive finite number"):
            dual_softmax(sim, temperature=bad)
    with pytest.raises(TypeError, match=r"beta must be a positive number, got bool"):
        inverted_softmax(sim, bank, beta=True)
    with pytest.raises(TypeError, match=r"sim must hold real numbers"):
        dual_softmax(np.array([["a", "b"]]))
    with pytest.raises(TypeError, match=r"sim must hold real numbers"):
        dual_softmax(torch.ones(2, 2, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"inverted_softmax overflowed.*logits"):
        inverted_softmax(np.array([[100.0]]), np.array([[-100.0]]), beta=20.0)
