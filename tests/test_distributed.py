"""Multi-process training: N processes with batch b compute the loss and gradients of one
process with batch N*b; evaluation shards merge back into the single-process order; a torchrun
run trains and only rank 0 writes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clip4clip.engine.evaluation_sharded import _encode_share, evaluate_distributed, merge_shares
from clip4clip.engine.distributed import DistInfo, all_gather_with_grad, env_info, wrap_ddp
from clip4clip.engine.step import ContrastiveStep, logit_scale
from clip4clip.loss import ClipLoss, contrastive_loss
from speed_utils import PROBES, assert_grads_close, grads, tiny_batch, tiny_model

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the loss, without processes
def test_single_process_clip_loss_needs_no_process_group_and_equals_the_model_loss():
    assert not dist.is_initialized()
    model = tiny_model()
    b = tiny_batch(6)
    out = model(b["input_ids"], b["attention_mask"], b["video"], b["video_mask"])
    loss = ClipLoss(rank=0, world_size=1)(out["text_emb"], out["video_emb"], logit_scale(model))
    torch.testing.assert_close(loss, out["loss"])
    with pytest.raises(ValueError, match="gather"):
        ClipLoss(rank=1, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        ClipLoss(rank=2, world_size=2)


@pytest.mark.parametrize("sizes", [(4, 4), (3, 5)])
def test_sharded_loss_averaged_over_ranks_is_the_full_batch_loss(sizes):
    """Two ranks simulated in one process: a gather whose blocks are the live tensors sums each
    block's gradient over the ranks' losses, which is what all_gather_with_grad's backward does
    across processes; averaging the ranks' gradients (DDP) must give the full-batch gradient."""
    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(sum(sizes), 16, generator=g), dim=-1).requires_grad_()
    video = torch.nn.functional.normalize(torch.randn(sum(sizes), 16, generator=g), dim=-1).requires_grad_()
    scale = torch.tensor(20.0, requires_grad=True)
    full = contrastive_loss(scale * text @ video.t())
    want = torch.autograd.grad(full, (text, video, scale))

    parts_t, parts_v = list(text.split(sizes)), list(video.split(sizes))

    def gather_for(rank):
        def gather(x):  # x is this rank's text or video block
            parts = parts_t if torch.equal(x, parts_t[rank]) else parts_v
            return [x if i == rank else p for i, p in enumerate(parts)]
        return gather

    losses = [ClipLoss(r, 2, gather=gather_for(r))(parts_t[r], parts_v[r], scale) for r in range(2)]
    mean = sum(losses) / 2
    assert mean.item() == pytest.approx(full.item(), abs=1e-6)
    got = torch.autograd.grad(mean, (text, video, scale))
    for w, h in zip(want, got):
        torch.testing.assert_close(h, w, atol=1e-6, rtol=1e-5)


def test_env_info_reads_torchrun_variables(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert env_info() == DistInfo()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert env_info() == DistInfo(3, 4, 1, 2)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4"):
        env_info()


# ---------------------------------------------------------------- 2 gloo processes
SPLITS = {"plain": lambda b, r: {k: v[r::2] for k, v in b.items()},             # the sampler's round robin
          "chunked": lambda b, r: {k: (v[:3] if r == 0 else v[3:]) for k, v in b.items()}}  # 3 + 5 clips


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = tiny_model()
        ddp = wrap_ddp(model, torch.device("cpu"), DistInfo(rank, 2))
        loss_fn = ClipLoss(rank, 2, gather=all_gather_with_grad)
        results = {}
        for mode, chunk in (("plain", 0), ("chunked", 2)):
            model.zero_grad(set_to_none=True)
            step = ContrastiveStep(ddp, loss_fn, chunk_size=chunk)
            loss = step(SPLITS[mode](tiny_batch(8), rank))
            results[mode] = (loss, grads(model))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # no rank closes its connections while the other is still using them
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    torch.set_num_threads(1)
    model = tiny_model()
    loss = ContrastiveStep(model)(tiny_batch(8))
    want = grads(model)
    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for mode, (got_loss, got) in results.items():
            assert got_loss.item() == pytest.approx(loss.item(), abs=1e-5), (rank, mode)
            assert_grads_close(got, want)
            assert set(got) == set(PROBES)


# ---------------------------------------------------------------- evaluation shards
class _Videos(torch.utils.data.Dataset):
    def __init__(self, ids, clips):
        self.video_ids, self.clips = ids, clips

    def __len__(self):
        return len(self.video_ids)

    def __getitem__(self, i):
        return {"video_id": self.video_ids[i], "video": self.clips[i], "video_mask": torch.ones(3, dtype=torch.long)}


class _TwoStream:
    """5 videos with 1-3 captions each, uint8 frames (normalised on the device)."""

    def __init__(self):
        clips = tiny_batch(5, uint8=True)["video"]
        ids = [f"v{i}" for i in range(5)]
        self.text_video_ids = [v for i, v in enumerate(ids) for _ in range(1 + i % 3)]
        self.texts = [f"caption {j} of {v}" for j, v in enumerate(self.text_video_ids)]
        self._videos = _Videos(ids, clips)

    def video_dataset(self):
        return self._videos


class _Tokenizer:
    def __call__(self, texts, max_words):
        ids = torch.zeros(len(texts), max_words, dtype=torch.long)
        for i, t in enumerate(texts):
            toks = [48] + [1 + (sum(map(ord, w)) % 40) for w in t.split()][: max_words - 2] + [49]
            ids[i, :len(toks)] = torch.tensor(toks)
        return ids, (ids > 0).long()


@pytest.mark.parametrize("world_size", [2, 3, 7])  # 7 > 5 videos: some ranks have nothing to encode
def test_evaluation_shards_merge_into_the_single_process_split(world_size):
    model, data, tok = tiny_model(), _TwoStream(), _Tokenizer()
    opts = dict(tokenizer=tok, max_words=8, batch_size=2, device=torch.device("cpu"), precision="fp32",
                num_workers=0, progress=False, desc="t")
    _, want = evaluate_distributed(model, data, DistInfo(), **opts)
    shares = [_encode_share(model, data, DistInfo(r, world_size), **opts) for r in range(world_size)]
    got = merge_shares(shares)
    assert got.texts == want.texts and got.video_ids == want.video_ids
    assert torch.equal(got.text_video_index, want.text_video_index)
    torch.testing.assert_close(got.text_emb, want.text_emb, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.video_emb, want.video_emb, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- torchrun end to end
@pytest.mark.slow
def test_torchrun_two_processes_train_like_one_process_and_only_rank0_writes(tmp_path):
    """2 gloo processes x batch 8, chunked loss, uint8 frames, against 1 process x batch 16."""
    from clip4clip.engine.train_job import run_training
    from framework_utils import compose_cfg, tiny_train_overrides
    common = ["trainer.epochs=1", "trainer.device=cpu", "trainer.vis_queries=1", "trainer.tensorboard=true"]
    single, _ = run_training(compose_cfg("train", tiny_train_overrides(tmp_path / "one", tmp_path / "syn", common)))

    out = tmp_path / "run"
    args = [a for a in tiny_train_overrides(out, tmp_path / "syn", common + [
        "trainer.loss_chunk_size=4", "trainer.normalize_on_device=true"]) if not a.startswith("paths.")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "train.py", *args, f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("2 processes x batch 8") == 1       # printed by rank 0 only
    assert proc.stdout.count("checkpoint from epoch") == 1       # the test table, once
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert len(list((out / "tensorboard").glob("events.*"))) == 1  # one writer, rank 0's

    import json
    multi = json.loads((out / "metrics.json").read_text())
    assert multi["history"][0]["train_loss"] == pytest.approx(single["history"][0]["train_loss"], abs=1e-5)
    a = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=False)
    assert a["state"]["step"] == b["state"]["step"] == 3         # 48 clips / global batch 16
    for k, v in b["model"].items():                              # 3 AdamW steps later
        torch.testing.assert_close(a["model"][k], v, atol=1e-4, rtol=1e-4, msg=k)
