"""The third kind of head (pair heads scoring word/frame features: DRL, X-CLIP, TS2-Net, and
tightTransf) through the whole framework: a tiny run trains and evaluates, evaluate.py on its
checkpoint gives the same metrics, the gradient cache gives the plain step's loss and gradients,
and evaluation's chunking and post-processing work unchanged."""
import pytest
import torch

from clip4clip.engine.evaluate_job import run_evaluation
from clip4clip.engine.evaluation import EncodedSplit, similarity_matrix
from clip4clip.engine.step import ContrastiveStep
from clip4clip.engine.train_job import run_training
from clip4clip.heads import HEADS
from framework_utils import compose_cfg, tiny_train_overrides
from speed_utils import tiny_batch, tiny_model

#: Pair heads with word or frame scoring; each one's small settings for a tiny model.
PAIR_HEADS = {"drl": {"num_blocks": 1}}


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data") / "synthetic"


def _model(head, seed=0):
    model = tiny_model(seed, head="meanP")
    from clip4clip.model import CLIP4Clip
    torch.manual_seed(seed)
    return CLIP4Clip.from_clip(model.clip, head, init_head_from_clip=False, **PAIR_HEADS[head])


@pytest.mark.parametrize("head", sorted(PAIR_HEADS))
def test_is_a_pair_head_registered_under_its_name(head):
    assert head in HEADS and not HEADS[head].two_tower


@pytest.mark.parametrize("head", sorted(PAIR_HEADS))
def test_gradient_cache_step_equals_the_plain_step(head):
    torch.set_num_threads(1)
    batch = tiny_batch(6)
    results = []
    for chunk in (0, 4):
        model = _model(head)
        model.train()
        loss = ContrastiveStep(model, chunk_size=chunk)(dict(batch))
        results.append((loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss, g), (loss_c, g_c) = results
    assert loss_c.item() == pytest.approx(loss.item(), abs=1e-5)
    assert set(g) == set(g_c) and any(n.startswith("head.") for n in g)
    for name in g:
        torch.testing.assert_close(g_c[name], g[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("head", sorted(PAIR_HEADS))
def test_evaluation_scores_in_chunks_like_one_pass(head, monkeypatch):
    from clip4clip.engine import evaluation
    model = _model(head).eval()
    batch = tiny_batch(7)
    with torch.no_grad():
        text = model.text_features(batch["input_ids"], batch["attention_mask"])
        video = model.video_features(batch["video"], batch["video_mask"])
        whole = model.score(text, video, batch["video_mask"], text_mask=batch["attention_mask"])
    enc = EncodedSplit(text, video, torch.arange(7), [str(i) for i in range(7)], [str(i) for i in range(7)],
                       video_mask=batch["video_mask"],
                       text_mask=batch["attention_mask"] if model.text_tokens else None)
    monkeypatch.setattr(evaluation, "CROSS_PAIRS_PER_PASS", 14)  # 2 texts per pass
    torch.testing.assert_close(similarity_matrix(enc, model), whole, atol=1e-6, rtol=0)
    part = similarity_matrix(enc, model, rows=slice(2, 5))
    torch.testing.assert_close(part, whole[2:5], atol=1e-6, rtol=0)


@pytest.mark.parametrize("head", sorted(PAIR_HEADS))
def test_a_tiny_run_trains_and_its_checkpoint_evaluates_to_the_same_metrics(head, tmp_path, synth_root):
    out = tmp_path / "run"
    kwargs = [f"+model.head.{k}={v}" if k not in ("num_blocks",) else f"model.head.{k}={v}"
              for k, v in PAIR_HEADS[head].items()]
    metrics, _ = run_training(compose_cfg("train", tiny_train_overrides(
        out, synth_root, [f"model/head={head}", "trainer.epochs=1", "trainer.tensorboard=false",
                          "eval.postprocess=[dsl]", *kwargs])))
    assert set(metrics["test"]) >= {"t2v", "v2t"}
    ev_cfg = compose_cfg("evaluate", [f"checkpoint={out / 'checkpoints' / 'best.pt'}",
                                      f"paths.output_dir={tmp_path / 'eval'}", "trainer.eval_batch_size=5",
                                      "trainer.progress=false"])
    result, _ = run_evaluation(ev_cfg, overrides=["trainer.eval_batch_size=5"])
    for d in ("t2v", "v2t"):
        for k in ("R1", "R5", "R10", "MdR", "MnR"):
            assert result["metrics"][d][k] == pytest.approx(metrics["test"][d][k]), (d, k)
