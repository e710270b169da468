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
from framework_utils import CONFIGS, compose_cfg, tiny_train_overrides
from speed_utils import tiny_batch, tiny_model

#: Pair heads with word or frame scoring; each one's small settings for a tiny model.
PAIR_HEADS = {"drl": {"num_blocks": 1},
              # the tiny run sizes X-CLIP's [L, L] / [T, T] tables from model.max_words (16) and
              # dataset.max_frames (4) through its YAML; the unit tests here keep 32 / 12 for 8 / 3 inputs
              "xclip": {"num_blocks": 1},
              # the tiny tower has one vision block (so the shift goes in block 0) and 4 patches; the
              # hard top-K in eval: upstream's noisy one makes two evaluations differ (the test below)
              "ts2net": {"num_blocks": 1, "shift_blocks": [0], "topk": 2, "topk_eval": "hard"}}


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


@pytest.mark.parametrize("head", [*sorted(PAIR_HEADS), "ts2net-official"])
def test_a_tiny_run_trains_and_its_checkpoint_evaluates_to_the_same_metrics(head, tmp_path, synth_root):
    out = tmp_path / "run"
    settings, eval_batch = PAIR_HEADS[head.split("-")[0]], 5
    if head == "ts2net-official":
        # Top-K noise in evaluation: evaluation runs under a fixed seed, so the same batches (the
        # noise is drawn per batch, as upstream) give the same scores.
        settings, head, eval_batch = {**settings, "topk_eval": "official"}, "ts2net", 8
    kwargs = [f"++model.head.{k}={v}" for k, v in settings.items()]  # ++: set, in the YAML or not
    metrics, _ = run_training(compose_cfg("train", tiny_train_overrides(
        out, synth_root, [f"model/head={head}", "trainer.epochs=1", "trainer.tensorboard=false",
                          "eval.postprocess=[dsl]", *kwargs])))
    assert set(metrics["test"]) >= {"t2v", "v2t"}
    ev_cfg = compose_cfg("evaluate", [f"checkpoint={out / 'checkpoints' / 'best.pt'}",
                                      f"paths.output_dir={tmp_path / 'eval'}",
                                      f"trainer.eval_batch_size={eval_batch}", "trainer.progress=false"])
    result, _ = run_evaluation(ev_cfg, overrides=[f"trainer.eval_batch_size={eval_batch}"])
    for d in ("t2v", "v2t"):
        for k in ("R1", "R5", "R10", "MdR", "MnR"):
            assert result["metrics"][d][k] == pytest.approx(metrics["test"][d][k]), (d, k)


SUCCESSOR_EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")
                               if p.stem.startswith(("drl_", "xclip_", "ts2net_")))
#: What a tiny tower needs to host each method (TS2-Net's shift blocks must exist in it).
TINY_HEAD_OVERRIDES = {"ts2net": ["model.head.shift_blocks=[0]"]}


def test_each_method_has_its_recipes():
    names = set(SUCCESSOR_EXPERIMENTS)
    for method in ("drl", "xclip", "ts2net"):
        assert f"{method}_msrvtt9k" in names and f"{method}_msrvtt9k_vitb16" in names
    for dataset in ("msvd", "lsmdc", "didemo", "activitynet"):  # X-CLIP's scripts cover all five
        assert f"xclip_{dataset}" in names and f"xclip_{dataset}_vitb16" in names


@pytest.mark.parametrize("experiment", SUCCESSOR_EXPERIMENTS)
def test_every_successor_experiment_builds_with_model_tiny_and_trains_a_step(experiment, tmp_path):
    from omegaconf import OmegaConf

    from clip4clip.weights import build_model
    method = experiment.split("_")[0]
    cfg = compose_cfg("train", [f"+experiment={experiment}", "model=tiny", f"model/head={method}",
                                "model.clip.arch.context_length=64", "model.clip.pretrained=null", f"paths.output_dir={tmp_path}",
                                *TINY_HEAD_OVERRIDES.get(method, [])])
    OmegaConf.resolve(cfg)
    assert cfg.model.head.name == method
    model = build_model(cfg.model, vocab_size=60)
    assert model.head.name == method and not model.two_tower
    words, frames, size = int(cfg.model.max_words), int(cfg.dataset.max_frames), int(cfg.model.image_size)
    g = torch.Generator().manual_seed(0)
    ids = torch.zeros(3, words, dtype=torch.long)
    for i, length in enumerate((words, 3, 5)):
        ids[i, :length] = torch.randint(1, 58, (length,), generator=g)
        ids[i, length - 1] = 59
    mask = torch.ones(3, frames, dtype=torch.long)
    mask[1, frames // 2:] = 0
    batch = {"input_ids": ids, "attention_mask": (ids > 0).long(),
             "video": torch.randn(3, frames, 3, size, size, generator=g), "video_mask": mask}
    model.train()
    loss = ContrastiveStep(model)(batch)
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())


@pytest.mark.parametrize("method", ["drl", "xclip", "ts2net"])
def test_evaluate_py_loads_each_methods_official_checkpoint(method, tmp_path, reference_dir, bpe_vocab_path,
                                                            synth_root):
    """``python evaluate.py checkpoint=<official pytorch_model.bin.N>``: the method is detected
    from the keys, every key used, and the model scores a split with the metrics' usual shape."""
    cfg = compose_cfg("evaluate", [f"checkpoint={reference_dir / f'{method}_official_ckpt.bin'}",
                                   "dataset=synthetic", f"dataset.root={synth_root}",
                                   "dataset.generator.num_train=48", "dataset.generator.num_val=16",
                                   "dataset.generator.num_test=16", "dataset.max_frames=12",
                                   f"model.bpe_vocab={bpe_vocab_path}", "trainer.progress=false",
                                   "eval.postprocess=[dsl]", f"paths.output_dir={tmp_path}"])
    result, objs = run_evaluation(cfg)
    assert result["checkpoint_kind"] == "official" and objs["model"].head.name == method
    assert result["num_texts"] == 16 and 0 <= result["metrics"]["t2v"]["R1"] <= 100


def test_frame_limits_name_the_setting_that_would_take_the_frames():
    from clip4clip.model import CLIP4Clip
    clip = tiny_model(head="meanP").clip
    xclip = CLIP4Clip.from_clip(clip, "xclip", init_head_from_clip=False, num_blocks=1)  # [12, 12] frame tables
    with pytest.raises(ValueError, match=r"\+\+model\.head\.max_frames=20"):
        xclip.check_frames(20)
    ts2 = CLIP4Clip.from_clip(tiny_model(head="meanP").clip, "ts2net", init_head_from_clip=False, num_blocks=1,
                              shift_blocks=[0], topk=3)  # 77 positions / 4 per frame = 19 frames
    ts2.check_frames(19)
    with pytest.raises(ValueError, match=r"\+\+model\.head\.num_positions=80"):
        ts2.check_frames(20)


def test_aim_refuses_a_tower_whose_blocks_a_head_wrapped():
    import adapters
    from clip4clip.model import CLIP4Clip
    model = CLIP4Clip.from_clip(tiny_model(head="meanP").clip, "ts2net", init_head_from_clip=False, num_blocks=1,
                                shift_blocks=[0])
    with pytest.raises(RuntimeError, match="already wrapped"):
        adapters.inject_aim(model.clip.visual, num_frames=4)
