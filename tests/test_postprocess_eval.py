"""Post-processing at evaluation (``eval.postprocess``): DSL, QB-Norm and inverted softmax run on
the evaluation's own similarity matrix, their metrics sit beside the plain ones (which do not
change), the querybank is drawn from the training captions, and bad values are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmark_layouts import write_didemo
from clip4clip.builder import build_tokenizer
from clip4clip.weights import build_model
from clip4clip.engine.evaluate_job import run_evaluation, training_querybank
from clip4clip.engine.evaluation import (Postprocess, draw_querybank, evaluate, evaluate_with_postprocessing,
                                         similarity_matrix)
from clip4clip.engine.train_job import run_training
from clip4clip.metrics import flatten, retrieval_metrics, retrieval_metrics_multi
from clip4clip.postprocess import dual_softmax, inverted_softmax, qb_norm
from data.splits import build_split
from toy_datasets import write_msvd_folder
from framework_utils import TINY_MODEL, compose_cfg

ALL = ["dsl", "qbnorm", "isoftmax"]


@pytest.fixture(scope="module")
def msvd(tmp_path_factory) -> Path:
    # 6 train / 2 val / 3 test videos with 4 captions each: the multi-caption layout.
    return write_msvd_folder(tmp_path_factory.mktemp("msvd") / "msvd", splits=(6, 2, 3), captions=4)


@pytest.fixture(scope="module")
def didemo(tmp_path_factory) -> Path:
    # One paragraph per video: the square layout (ground truth on the diagonal).
    return write_didemo(tmp_path_factory.mktemp("didemo") / "didemo")


def _split(name: str, root: Path, split: str):
    cfg = compose_cfg("train", [f"dataset={name}", f"dataset.root={root}", "dataset.max_frames=3"]).dataset
    return build_split(cfg, root, split, 32, 0, progress=False)


def _tiny(head: str, train):
    cfg = compose_cfg("train", ["model=tiny", f"model/head={head}", *TINY_MODEL]).model
    tokenizer = build_tokenizer(cfg, train_texts=[c for caps in train.captions.values() for c in caps])
    torch.manual_seed(0)
    return build_model(cfg, vocab_size=tokenizer.vocab_size).eval(), tokenizer


def _direct(sim, enc, bank_sim, temperature):
    """What each method must give: clip4clip.postprocess on the matrix, ranked as the plain metrics."""
    square = len(enc.texts) == len(enc.video_ids) and torch.equal(enc.text_video_index,
                                                                   torch.arange(len(enc.texts)))

    def rank(m):
        return retrieval_metrics(m) if square else retrieval_metrics_multi(m, enc.text_video_index)
    return {"dsl": {"t2v": rank(dual_softmax(sim, temperature))["t2v"],
                    "v2t": rank(dual_softmax(sim.T, temperature).T)["v2t"]},
            "qbnorm": {"t2v": rank(qb_norm(sim, bank_sim, beta=20.0, k=1))["t2v"]},
            "isoftmax": {"t2v": rank(inverted_softmax(sim, bank_sim, beta=20.0))["t2v"]}}


@pytest.mark.parametrize("layout", ["msvd", "didemo"])
@pytest.mark.parametrize("head", ["meanP", "tightTransf"])
def test_postprocessed_metrics_equal_a_direct_computation_and_plain_ones_do_not_change(layout, head, msvd, didemo):
    name, root = {"msvd": ("msvd", msvd), "didemo": ("didemo", didemo)}[layout]
    train, test = _split(name, root, "train"), _split(name, root, "test")
    model, tok = _tiny(head, train)
    opts = dict(tokenizer=tok, max_words=16, batch_size=64, device=torch.device("cpu"), progress=False)
    plain, enc = evaluate(model, test, **opts)
    bank = draw_querybank(train.captions, 7, seed=3)
    post = Postprocess(methods=tuple(ALL))
    metrics, processed, enc2 = evaluate_with_postprocessing(model, test, **opts, post=post, querybank=bank)
    assert metrics == plain  # the plain ranking is the same whatever is post-processed
    if layout == "msvd":
        assert metrics["t2v"]["num_queries"] == 12 and metrics["v2t"]["num_queries"] == 3
    sim = similarity_matrix(enc2, model)  # rows are texts, for the cross-encoder too
    ids, mask = tok(bank.texts, max_words=16)
    with torch.no_grad():
        bank_feats = model.text_features(ids, mask)
        bank_sim = bank_feats @ enc2.video_emb.T if model.two_tower else \
            model.score(bank_feats, enc2.video_emb, enc2.video_mask)
    # DSL's temperature: 100 x cosines (CLIP's logit scale) for two towers, 1 x tightTransf's logits.
    temperature = 100.0 if model.two_tower else 1.0
    assert flatten(processed.metrics) == pytest.approx(flatten(_direct(sim, enc2, bank_sim, temperature)))
    assert set(processed.metrics["qbnorm"]) == set(processed.metrics["isoftmax"]) == {"t2v"}
    assert processed.settings["qbnorm"] == {"beta": 20.0, "k": 1, "querybank": bank.settings()}
    assert processed.settings["dsl"] == {"temperature": temperature, "queries": len(enc2.texts)}


def test_querybank_comes_from_training_captions_and_its_size_is_respected(msvd):
    train, test = _split("msvd", msvd, "train"), _split("msvd", msvd, "test")
    train_caps = {c for caps in train.captions.values() for c in caps}
    test_caps = set(test.texts)
    assert len(train_caps) == 24 and not train_caps & test_caps
    dcfg = compose_cfg("evaluate", ["dataset=msvd", f"dataset.root={msvd}"]).dataset
    for size, want in ((5, 5), (24, 24), (10_000, 24), (None, 24)):
        bank = training_querybank(dcfg, msvd, Postprocess(("qbnorm",), querybank_size=size), 32, 0)
        assert len(bank.texts) == want and set(bank.texts) <= train_caps
        assert (bank.split, bank.available) == ("train", 24)
    a, b = (draw_querybank(train.captions, 5, seed=s).texts for s in (0, 0))
    assert a == b and draw_querybank(train.captions, 5, seed=1).texts != a
    with pytest.raises(ValueError, match="no captions"):
        draw_querybank({}, 5)


def test_evaluate_py_saves_postprocessed_metrics_beside_the_plain_ones(msvd, tmp_path, reference_dir, bpe_vocab_path):
    # A tiny CLIP file as the checkpoint (zero-shot path): nothing to train.
    common = [f"checkpoint={reference_dir / 'clip_tiny_openai_state_dict.pt'}", "dataset=msvd",
              f"dataset.root={msvd}", "dataset.max_frames=3", f"model.bpe_vocab={bpe_vocab_path}",
              "trainer.progress=false"]
    plain, _ = run_evaluation(compose_cfg("evaluate", [*common, f"paths.output_dir={tmp_path / 'plain'}"]))
    assert plain["postprocessed"] == {}
    result, _ = run_evaluation(compose_cfg("evaluate", [*common, f"paths.output_dir={tmp_path / 'post'}",
                                                        "eval.postprocess=[dsl,qbnorm,isoftmax]",
                                                        "eval.querybank.size=5", "eval.querybank.seed=1"]))
    saved = json.loads((tmp_path / "post" / "metrics.json").read_text())
    assert saved["metrics"] == plain["metrics"] == result["metrics"]  # plain, never replaced
    assert list(saved["postprocessed"]) == ALL
    assert set(saved["postprocessed"]["dsl"]) == {"t2v", "v2t"}
    assert saved["postprocess_settings"]["qbnorm"]["querybank"] == {"split": "train", "size": 5, "available": 24,
                                                                    "seed": 1}


def test_training_final_test_reports_postprocessed_beside_plain(msvd, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = ["+experiment=demo", *TINY_MODEL, "dataset=msvd", f"dataset.root={msvd}", f"paths.output_dir={out}",
                 "dataset.max_frames=3", "trainer.epochs=1", "trainer.batch_size=8", "trainer.eval_batch_size=8",
                 "trainer.progress=false", "trainer.threads=1", "trainer.num_workers=0", "trainer.tensorboard=false",
                 "eval.postprocess=[dsl,qbnorm]", "eval.querybank.size=10"]
    metrics, _ = run_training(compose_cfg("train", overrides))
    printed = capsys.readouterr().out
    assert "post-processed: dsl = dual softmax (DSL), over all 12 test queries" in printed
    assert "post-processed: qbnorm = QB-Norm" in printed and "t2v only" in printed
    saved = json.loads((out / "metrics.json").read_text())
    assert list(saved["test_postprocessed"]) == ["dsl", "qbnorm"]
    assert saved["postprocess_settings"]["qbnorm"]["querybank"]["size"] == 10
    ev, _ = run_evaluation(compose_cfg("evaluate", [f"checkpoint={out / 'checkpoints' / 'best.pt'}",
                                                    f"paths.output_dir={tmp_path / 'ev'}", "trainer.progress=false"]))
    assert flatten(saved["test"]) == pytest.approx(flatten(ev["metrics"]))  # the plain test metrics are evaluate.py's


@pytest.mark.parametrize("key, value, message", [
    ("eval.postprocess", "dsm", "eval.postprocess='dsm'; expected one of none, dsl, qbnorm, isoftmax"),
    ("eval.postprocess", "[dsl,qb]", "eval.postprocess=['dsl', 'qb']; expected one of none, dsl, qbnorm, isoftmax"),
    ("eval.qb_k", "0", "eval.qb_k=0; expected a whole number >= 1"),
    ("eval.qb_beta", "-1", "eval.qb_beta=-1; expected a positive number"),
    ("eval.querybank.size", "2.5", "eval.querybank.size=2.5; expected a whole number >= 1 or null"),
])
def test_bad_eval_values_are_refused_in_one_line_naming_the_key(key, value, message, tmp_path, msvd):
    cfg = compose_cfg("evaluate", ["checkpoint=/no/such/checkpoint.pt", f"paths.output_dir={tmp_path}",
                                   f"{key}={value}"])
    with pytest.raises(ValueError) as e:  # before the (missing) checkpoint is looked at
        run_evaluation(cfg)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    if key == "eval.postprocess":  # training refuses it before the first step
        cfg = compose_cfg("train", ["+experiment=demo", *TINY_MODEL, "dataset=msvd", f"dataset.root={msvd}",
                                    f"paths.output_dir={tmp_path / 'run'}", "trainer.progress=false",
                                    f"{key}={value}"])
        with pytest.raises(ValueError, match="eval.postprocess="):
            run_training(cfg)
        assert not list((tmp_path / "run" / "checkpoints").glob("*.pt"))
