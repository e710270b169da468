"""Search command line: index, search (table and JSON), and one-line errors."""
import json

import pytest

import search_utils as su
from search_utils import base, run  # noqa: F401  (session fixtures)
from clip4clip.search import Encoder
from clip4clip.search.__main__ import _default_library, main


def test_index_then_search_as_table_and_json(tmp_path, run, capsys):
    out = tmp_path / "index"
    # A run folder stands for its best checkpoint.
    assert main(["index", "--videos", str(su.real_videos()), "--checkpoint", str(run["run"]),
                 "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    out_text = capsys.readouterr().out
    assert "3 videos (3 added" in out_text
    # The index says how big it is, next to the library it indexes.
    size_line = next(line for line in out_text.splitlines() if "index size:" in line)
    assert "playback copies" in size_line and "x the library (2.3 MB)" in size_line
    assert main(["index", "--videos", str(su.real_videos()), "--checkpoint", str(run["checkpoint"]),
                 "--out", str(out), "--no-progress"]) == 0
    assert "3 unchanged" in capsys.readouterr().out

    assert main(["search", "--index", str(out), "two people at a table", "-k", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["rank", "score", "moment", "segment", "path"] and len(table) == 3
    assert main(["search", "--index", str(out), "two people at a table", "-k", "5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["query"] == "two people at a table" and len(data["results"]) == 3
    hit = data["results"][0]
    assert {"rank", "path", "score", "moment", "moment_score", "start", "end", "duration", "available"} <= set(hit)
    assert 0 <= hit["start"] <= hit["moment"] < hit["end"] <= hit["duration"] and hit["rank"] == 1
    assert data["query_used"]["truncated"] is False


def test_a_cut_query_is_reported_on_the_command_line(base, run, capsys):
    out = su.built_index("synthetic_index", su.synthetic_library(base, run["data"]), run["checkpoint"], base)
    long_query = " ".join(["a red circle moves left on a blue background"] * 6)
    assert main(["search", "--index", str(out), long_query, "-k", "2"]) == 0
    captured = capsys.readouterr()
    budget = su.encoder(run["checkpoint"]).max_words - 2
    assert f"only the first {budget} were used: 'a red circle moves left" in captured.err
    assert captured.out.splitlines()[0].split()[0] == "rank"  # the table itself stays clean
    assert main(["search", "--index", str(out), long_query, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["query_used"]["truncated"] is True


def test_the_readme_path_indexes_the_test_split(tmp_path, run, capsys):
    """README quick start: index the test split of the checkpoint's dataset (its own captions
    and the train captions repeat each other; the test split is what its metrics rank)."""
    out = tmp_path / "index"
    assert main(["index", "--checkpoint", str(run["run"]), "--split", "test", "--out", str(out),
                 "--no-progress", "--proxies", "off"]) == 0
    text = capsys.readouterr().out
    assert "indexing the 24 videos of the test split" in text and "24 videos (24 added" in text
    from clip4clip.search import SearchIndex
    paths = {h.path for h in SearchIndex.open(out).search("x", k=100)}
    assert paths == {f"{vid}.mp4" for vid in su.split_captions(run["data"])}


def test_caption_matches_from_the_command_line(base, run, capsys):
    out = su.built_index("synthetic_index", su.synthetic_library(base, run["data"]), run["checkpoint"], base)
    caption = next(iter(su.split_captions(run["data"]).values()))
    assert main(["search", "--index", str(out), caption, "-k", "3", "--json", "--captions"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["caption_matches"]) == 3 and data["results"][0]["captions"]


def test_errors_are_one_line_and_exit_2(tmp_path, base, run, capsys):
    out = su.built_index("real_index", su.real_videos(), run["checkpoint"], base)
    cases = [
        (["search", "--index", str(tmp_path / "nope"), "x"], "no such folder"),
        (["search", "--index", str(out), "   "], "the query is empty"),
        (["search", "--index", str(out), "x" * 501], "the limit is 500"),
        (["search", "--index", str(out), "x", "--backend", "faiss"], "no FAISS index"),
        (["index", "--videos", str(tmp_path), "--checkpoint", str(run["checkpoint"]), "--out",
          str(tmp_path / "o"), "--shard", "2/2"], "expected 0 <= I < N"),
        (["merge", "--out", str(tmp_path / "m"), str(out)], "not a partial index"),
        (["index", "--videos", str(tmp_path / "none"), "--checkpoint", str(run["checkpoint"]), "--out",
          str(tmp_path / "o")], "no such folder"),
        (["index", "--videos", str(tmp_path), "--checkpoint", str(tmp_path / "missing.pt"), "--out",
          str(tmp_path / "o")], "no such file or run folder"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (argv, err)


def test_videos_default_to_the_checkpoints_dataset(run):
    enc = Encoder.load(str(run["checkpoint"]))
    assert _default_library(enc) == run["data"] / "videos"
    # Sampling follows the checkpoint's own evaluation settings.
    assert (enc.sampling.fps, enc.sampling.max_frames, enc.sampling.image_size) == (0.5, 4, 32)


def test_zero_shot_clip_weights_index_and_search(tmp_path, capsys):
    """A CLIP weights file (the zero-shot path; ViT-B/32's own file is the same format):
    meanP head, CLIP's BPE tokenizer, CLIP4Clip's 1 fps / 12 frames sampling."""
    import torch
    from clip4clip.clip import CLIP, CLIPConfig
    clip = CLIP(CLIPConfig(embed_dim=64, image_resolution=32, vision_layers=1, vision_width=64,
                           vision_patch_size=16, context_length=77, vocab_size=49408,
                           transformer_width=64, transformer_layers=1))
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    bpe = su.SHARED / "clip" / "bpe_simple_vocab_16e6.txt.gz"
    out = tmp_path / "index"
    assert main(["index", "--videos", str(su.real_videos()), "--checkpoint", str(tmp_path / "clip.pt"),
                 "--bpe-vocab", str(bpe), "--out", str(out), "--no-progress", "--proxies", "off"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(out), "a pool", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["results"]) == 3
    from clip4clip.search import SearchIndex
    meta = SearchIndex.open(out).meta
    assert meta["model"]["kind"] == "clip" and meta["model"]["bpe_vocab"] == str(bpe.resolve())
    assert (meta["sampling"]["fps"], meta["sampling"]["max_frames"]) == (1.0, 12)
