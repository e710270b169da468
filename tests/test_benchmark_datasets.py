"""DiDeMo, ActivityNet Captions and LSMDC end to end: a tiny folder in each official layout
(paragraph captions, real-looking file names, the oddities each reader tolerates) trains one
step and is evaluated through ``train.py`` and ``evaluate.py`` as a user types them; one bad
record of every kind a reader collects stops the run before training with all of them listed;
paragraphs longer than ``model.max_words`` are cut as CLIP4Clip cuts them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark_layouts import WRITERS, add_bad_records, didemo_paragraphs
from clip4clip.engine.train_job import run_training
from data.readers.annotations import AnnotationError
from framework_utils import REPO, TINY_MODEL, compose_cfg

# One head per dataset, so the two-tower and the cross-encoder paths both run end to end.
HEADS = {"didemo": "seqTransf", "activitynet": "meanP", "lsmdc": "tightTransf"}
TEST_SIZE = {"didemo": 3, "activitynet": 3, "lsmdc": 3}
SMALL = ["dataset.max_frames=4", "trainer.epochs=1", "trainer.batch_size=4", "trainer.eval_batch_size=4",
         "trainer.progress=false", "trainer.threads=1", "trainer.num_workers=0", "trainer.tensorboard=false",
         "trainer.log_every=1"]


@pytest.fixture(scope="module", params=sorted(WRITERS))
def dataset(request, tmp_path_factory):
    name = request.param
    return name, WRITERS[name](tmp_path_factory.mktemp(name) / name)


def _run(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_and_evaluate_from_the_command_line(dataset, tmp_path):
    name, root = dataset
    out, ev = tmp_path / "run", tmp_path / "ev"
    proc = _run(["train.py", f"dataset={name}", f"dataset.root={root}", "model=tiny", f"model/head={HEADS[name]}",
                 *TINY_MODEL, *SMALL, f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "R@1" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["step"] for h in metrics["history"]] == [1]  # one step: 4 training items, batch 4
    assert metrics["test"]["t2v"]["num_queries"] == TEST_SIZE[name]
    if name != "lsmdc":  # paragraphs are longer than the tiny model's 16 words: cut, and counted
        assert metrics["captions"]["cut"] == metrics["captions"]["seen"] == 4

    post = ["eval.postprocess=[dsl,qbnorm,isoftmax]", "eval.querybank.size=3"]
    proc = _run(["evaluate.py", f"checkpoint={out / 'checkpoints' / 'best.pt'}", f"hydra.run.dir={ev}",
                 "trainer.progress=false", *post], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"on {name} test ({TEST_SIZE[name]} captions, {TEST_SIZE[name]} videos)" in proc.stdout
    assert "post-processed: dsl" in proc.stdout and "post-processed: qbnorm" in proc.stdout
    result = json.loads((ev / "metrics.json").read_text())
    assert result["dataset"] == name and result["metrics"]["t2v"]["R1"] == pytest.approx(metrics["test"]["t2v"]["R1"])
    assert list(result["postprocessed"]) == ["dsl", "qbnorm", "isoftmax"]
    assert result["postprocess_settings"]["qbnorm"]["querybank"]["available"] == 4  # the 4 training texts


def test_one_bad_record_of_each_kind_is_reported_together_before_training(dataset, tmp_path):
    name, root = dataset
    root = Path(shutil.copytree(root, tmp_path / "copy"))
    expected = add_bad_records(name, root)
    cfg = compose_cfg("train", [f"dataset={name}", f"dataset.root={root}", "model=tiny", *TINY_MODEL, *SMALL,
                                f"paths.output_dir={tmp_path / 'run'}"])
    with pytest.raises(AnnotationError) as e:
        run_training(cfg)
    assert len(e.value.problems) == expected and f"{expected} problem(s)" in str(e.value).splitlines()[0]
    assert not list((tmp_path / "run" / "checkpoints").glob("*.pt"))


def test_paragraphs_are_cut_to_their_first_max_words_minus_2_tokens_as_clip4clip(bpe_vocab_path):
    # CLIP4Clip's loaders: words = tokenize(text); [CLS] + words cut to max_words - 1 tokens;
    # + [SEP]; zero padded. I.e. SOT + the first max_words - 2 BPE tokens + EOT.
    from clip4clip.tokenizer import ClipTokenizer
    tok = ClipTokenizer(vocab_path=str(bpe_vocab_path))
    paragraph = " ".join(didemo_paragraphs("test").values())  # ~120 BPE tokens
    bpe = tok.encode(paragraph)
    assert len(bpe) > 62
    sot, eot = 49406, 49407  # CLIP's <|startoftext|>, <|endoftext|>
    assert (tok.sot_token_id, tok.eot_token_id) == (sot, eot)
    ids, mask, lengths = tok([paragraph, "a short one"], max_words=64, return_lengths=True)
    official = [sot] + bpe[:62] + [eot]
    assert ids[0].tolist() == official and mask[0].tolist() == [1] * 64
    assert int(lengths[0]) > 62 and ids.shape == (2, 64)  # counted as cut
    short = tok.encode("a short one")
    assert ids[1].tolist() == [sot] + short + [eot] + [0] * (64 - len(short) - 2)
    assert torch.equal(mask[1], (ids[1] != 0).long())
