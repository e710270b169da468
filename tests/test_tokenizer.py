"""CLIP BPE parity with OpenAI's tokenizer (golden file), edge cases, vocabulary resolution and
the word-level tokenizer. The vocabulary is read from ../shared and copied only into tmp dirs."""
import gzip
import hashlib
import http.server
import json
import random
import shutil
import socket
import threading
import time
from functools import partial

import pytest
import torch

import clip4clip.tokenizer as tokenizer_mod
from clip4clip.core.download import ChecksumError, DownloadError
from clip4clip.tokenizer import (
    BPE_VOCAB_FILENAME,
    BPE_VOCAB_SHA256,
    ClipTokenizer,
    WordTokenizer,
    bytes_to_unicode,
)

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def tok(bpe_vocab_path):
    return ClipTokenizer(bpe_vocab_path)


@pytest.fixture(scope="module")
def golden(reference_dir):
    with open(reference_dir / "tokenizer_golden.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert len(rows) == 630
    return rows


def _row_tokens(ids: torch.Tensor, mask: torch.Tensor, row: int) -> list:
    n = int(mask[row].sum())
    return ids[row, :n].tolist()


def _check_layout(tok, ids, mask, texts, max_words):
    """SOT first, EOT right after the first max_words-2 tokens, zeros after, mask on SOT..EOT."""
    assert ids.shape == mask.shape == (len(texts), max_words)
    assert ids.dtype == mask.dtype == torch.long
    for row, text in enumerate(texts):
        n = int(mask[row].sum())
        assert mask[row, :n].eq(1).all() and mask[row, n:].eq(0).all()
        assert ids[row, n:].eq(0).all()
        assert _row_tokens(ids, mask, row) == [SOT] + tok.encode(text)[: max_words - 2] + [EOT]


# --------------------------------------------------------------------------- parity


def test_special_ids_and_size(tok):
    assert tok.vocab_size == 49408
    assert (tok.sot_token_id, tok.eot_token_id, tok.pad_token_id) == (SOT, EOT, 0)


def test_golden_encode_and_decode(tok, golden):
    wrong = [r["text"] for r in golden if tok.encode(r["text"]) != r["bpe_ids"]]
    assert not wrong, f"{len(wrong)} texts encode differently from CLIP, e.g. {wrong[:3]!r}"
    wrong = [r["text"] for r in golden if tok.decode(r["bpe_ids"]) != r["decoded"]]
    assert not wrong, f"{len(wrong)} texts decode differently from CLIP, e.g. {wrong[:3]!r}"


def test_golden_batch_matches_clip4clip_input(tok, golden):
    texts = [r["text"] for r in golden]
    ids, mask = tok(texts, max_words=32)
    assert ids.tolist() == [r["clip4clip_ids_32"] for r in golden]
    expected_len = torch.tensor([min(len(r["bpe_ids"]), 30) + 2 for r in golden])
    assert mask.sum(dim=1).tolist() == expected_len.tolist()
    assert (mask == (torch.arange(32) < expected_len[:, None]).long()).all()
    # The text tower pools at argmax(input_ids): that must be the EOT position.
    no_literal_eot = [i for i, r in enumerate(golden) if EOT not in r["bpe_ids"]]
    assert (ids[no_literal_eot].argmax(dim=1) == expected_len[no_literal_eot] - 1).all()


def test_golden_one_by_one_equals_batch(tok, golden):
    ids, mask = tok([r["text"] for r in golden[:50]])
    for i, r in enumerate(golden[:50]):
        one_ids, one_mask = tok(r["text"])
        assert torch.equal(one_ids[0], ids[i]) and torch.equal(one_mask[0], mask[i])


@pytest.mark.parametrize("max_words", [3, 4, 7, 17, 64])
def test_truncation_is_exact_for_any_length(tok, golden, max_words):
    # The batch call stops BPE early; it must still equal encode() truncated.
    texts = [r["text"] for r in golden]
    ids, mask = tok(texts, max_words=max_words)
    _check_layout(tok, ids, mask, texts, max_words)


def test_decode_rows_with_skip_special_tokens(tok, golden):
    ids, _ = tok([r["text"] for r in golden])
    for i, r in enumerate(golden):
        expected = tok.decode([t for t in r["bpe_ids"][:30] if t != SOT])
        assert tok.decode(ids[i], skip_special_tokens=True) == expected
    # Without skipping, decode is CLIP's: specials are literal text, padding id 0 is "!".
    assert tok.decode([SOT, 320, EOT, 0, 0]) == "<|startoftext|>a <|endoftext|>!!"


def test_decode_rejects_out_of_range_ids(tok):
    with pytest.raises(ValueError, match="49408"):
        tok.decode([320, 49408])
    with pytest.raises(ValueError, match="-1"):
        tok.decode([-1])


def _reference_bpe(symbols: str, ranks: dict) -> list:
    """The textbook loop: merge every occurrence of the lowest-ranked pair, left to right."""
    word = list(symbols[:-1]) + [symbols[-1] + "</w>"]
    while len(word) > 1:
        pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(word):
            if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                merged.append(best[0] + best[1])
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return word


def test_fast_bpe_matches_reference_loop(tok, bpe_vocab_path):
    lines = gzip.open(bpe_vocab_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    ranks = dict(zip(merges, range(len(merges))))
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    encoder = {s: i for i, s in enumerate(vocab)}
    byte_encoder = bytes_to_unicode()

    rng = random.Random(0)
    words = ["a" * n for n in (1, 2, 3, 7, 64, 301)] + ["ab" * 150, "abc" * 100, "ssss" * 40]
    for alphabet in ("aeinorst", "abcdefghijklmnopqrstuvwxyz", "éñüaeo", "的一是不了人我在"):
        words += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(100)]
    words += [_random_word(500, seed) for seed in range(3)]
    for word in words:
        symbols = "".join(byte_encoder[b] for b in word.encode("utf-8"))
        expected = [encoder[s] for s in _reference_bpe(symbols, ranks)]
        assert tok.encode(word) == expected, word


# --------------------------------------------------------------------------- edge cases

EDGE_TEXTS = [
    "",
    "   \t\n  ",
    "😀🎉👍🏽 emoji only",
    "视频检索 한국어 日本語のテキスト",
    "مرحبا بالعالم and שלום עולם",
    "ctrl\x07\x1b[0m\x7f chars\x0b\x0c",
    "nul\x00byte\x00",
    "\ud800",
    "lone \udfff surrogate \ud83d",
    "<|endoftext|> <|STARTOFTEXT|>",
    "&amp;lt;b&amp;gt; double-escaped",
    "word " * 2000,
    "x" * 10000,
]


def test_edge_cases_tokenize(tok):
    ids, mask = tok(EDGE_TEXTS)
    _check_layout(tok, ids, mask, EDGE_TEXTS, 32)
    assert int(ids.max()) < tok.vocab_size
    assert tok.encode("") == [] and tok.encode("  \t\n ") == []
    assert _row_tokens(ids, mask, 0) == [SOT, EOT]
    # ftfy turns a lone surrogate into U+FFFD; it must come out as that, not crash.
    assert tok.decode(tok.encode("\ud800")) == "\ufffd "
    assert tok.decode(tok.encode("nul\x00byte\x00")) == "nulbyte "
    assert tok.encode("<|endoftext|> <|STARTOFTEXT|>") == [EOT, SOT]
    assert tok.decode(tok.encode("&amp;lt;b&amp;gt;")) == "< b > "
    # With a '<' in the text ftfy leaves entities alone: only the double html.unescape helps.
    assert tok.decode(tok.encode("<x> &amp;lt;b&amp;gt;")) == "< x > < b > "


def test_long_texts_truncate_with_eot_last(tok):
    text = " ".join(f"word{i}" for i in range(500))
    ids, mask = tok([text, "short"], max_words=32)
    assert mask[0].all() and ids[0, -1] == EOT
    assert ids[0, 1:-1].tolist() == tok.encode(text)[:30]
    ids, mask = tok(text, max_words=3)
    assert ids.tolist() == [[SOT, tok.encode(text)[0], EOT]]


def _random_word(n: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))


# Random letters are the hard case: CLIP's loop needs ~5 s on this word, one pass per merge rank.
@pytest.mark.parametrize("word", ["a" * 10000, _random_word(10000)], ids=["repeated-letter", "random-letters"])
def test_pathological_word_is_fast(tok, word):
    start = time.perf_counter()
    ids, mask = tok([word, word.upper() + "!"], max_words=32)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"batch call on a 10,000-letter word took {elapsed:.2f}s"
    assert mask.all() and (ids[:, -1] == EOT).all()
    start = time.perf_counter()
    full = tok.encode(word)
    assert time.perf_counter() - start < 2.0
    assert ids[0, 1:-1].tolist() == full[:30]
    assert tok.decode(full) == word + " "


def test_cache_is_bounded(tok):
    fresh = ClipTokenizer(tok.vocab_path)
    fresh.encode(" ".join(f"w{i}x" for i in range(tokenizer_mod._CACHE_MAX_ENTRIES + 500)))
    assert len(fresh._cache) <= tokenizer_mod._CACHE_MAX_ENTRIES
    fresh.encode("y" * 5000)
    assert "y" * 5000 not in fresh._cache


def test_argument_checks(tok):
    with pytest.raises(ValueError, match="max_words"):
        tok("a cat", max_words=2)
    with pytest.raises(TypeError, match="max_words"):
        tok("a cat", max_words="32")
    with pytest.raises(TypeError, match="int"):
        tok(123)
    with pytest.raises(TypeError, match=r"texts\[1\].*NoneType"):
        tok(["ok", None])
    with pytest.raises(TypeError, match="bytes"):
        tok.encode(b"bytes")
    ids, mask = tok(("a", "b"), max_words=5)
    assert ids.shape == (2, 5)
    ids, mask = tok([], max_words=8)
    assert ids.shape == mask.shape == (0, 8)


# --------------------------------------------------------------------------- resolution


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No vocabulary env var, and a home folder with an empty cache: nothing leaks in."""
    monkeypatch.delenv("CLIP4CLIP_BPE_VOCAB", raising=False)
    monkeypatch.delenv("CLIP4CLIP_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def vocab_server(tmp_path, bpe_vocab_path):
    """HTTP server on 127.0.0.1 serving a tmp copy of the vocabulary; yields (root, base url, requests)."""
    root = tmp_path / "www"
    root.mkdir()
    shutil.copy(bpe_vocab_path, root / BPE_VOCAB_FILENAME)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", server.requests
    server.shutdown()
    server.server_close()


def test_explicit_missing_path_is_an_error_without_fallthrough(clean_env, bpe_vocab_path, tmp_path):
    clean_env.setenv("CLIP4CLIP_BPE_VOCAB", str(bpe_vocab_path))
    missing = tmp_path / "nope" / "vocab.txt.gz"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ClipTokenizer(missing)


def test_env_var_is_used_and_checked(clean_env, bpe_vocab_path, tmp_path):
    copy = tmp_path / "custom.txt.gz"
    shutil.copy(bpe_vocab_path, copy)
    clean_env.setenv("CLIP4CLIP_BPE_VOCAB", str(copy))
    assert ClipTokenizer(cache_dir=tmp_path / "unused").vocab_path == copy.resolve()
    clean_env.setenv("CLIP4CLIP_BPE_VOCAB", str(tmp_path / "missing.gz"))
    with pytest.raises(FileNotFoundError, match="CLIP4CLIP_BPE_VOCAB"):
        ClipTokenizer()


def test_cache_dir_argument_and_env(clean_env, bpe_vocab_path, tmp_path):
    for name in ("arg_cache", "env_cache"):
        (tmp_path / name).mkdir()
        shutil.copy(bpe_vocab_path, tmp_path / name / BPE_VOCAB_FILENAME)
    clean_env.setattr(tokenizer_mod, "BPE_VOCAB_URL", "http://127.0.0.1:9/never-fetched")
    clean_env.setenv("CLIP4CLIP_CACHE_DIR", str(tmp_path / "env_cache"))
    assert ClipTokenizer().vocab_path == (tmp_path / "env_cache" / BPE_VOCAB_FILENAME).resolve()
    chosen = ClipTokenizer(cache_dir=tmp_path / "arg_cache").vocab_path
    assert chosen == (tmp_path / "arg_cache" / BPE_VOCAB_FILENAME).resolve()


def test_download_into_cache_once(clean_env, vocab_server, tmp_path, tok):
    _, base, requests = vocab_server
    clean_env.setattr(tokenizer_mod, "BPE_VOCAB_URL", f"{base}/{BPE_VOCAB_FILENAME}")
    cache = tmp_path / "cache"
    downloaded = ClipTokenizer(cache_dir=cache)
    cached = cache / BPE_VOCAB_FILENAME
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == BPE_VOCAB_SHA256
    assert sorted(p.name for p in cache.iterdir()) == [BPE_VOCAB_FILENAME]
    assert downloaded.encode("A man is playing guitar!") == tok.encode("A man is playing guitar!")
    ClipTokenizer(cache_dir=cache)
    assert requests == [f"/{BPE_VOCAB_FILENAME}"]


def test_download_with_wrong_checksum_leaves_cache_empty(clean_env, vocab_server, tmp_path):
    root, base, _ = vocab_server
    served = root / BPE_VOCAB_FILENAME
    data = bytearray(served.read_bytes())
    data[-1] ^= 0xFF
    served.write_bytes(bytes(data))
    clean_env.setattr(tokenizer_mod, "BPE_VOCAB_URL", f"{base}/{BPE_VOCAB_FILENAME}")
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match=BPE_VOCAB_SHA256):
        ClipTokenizer(cache_dir=cache)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_offline_error_says_where_to_put_the_file(clean_env, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clean_env.setattr(tokenizer_mod, "BPE_VOCAB_URL", f"http://127.0.0.1:{port}/{BPE_VOCAB_FILENAME}")
    with pytest.raises(DownloadError) as info:
        ClipTokenizer(cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert str(tmp_path / "cache" / BPE_VOCAB_FILENAME) in message
    assert "CLIP4CLIP_BPE_VOCAB" in message and "vocab_path" in message


def test_corrupt_cached_file_is_reported_not_deleted(clean_env, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / BPE_VOCAB_FILENAME).write_bytes(b"not the vocabulary")
    with pytest.raises(ChecksumError, match="delete"):
        ClipTokenizer(cache_dir=cache)
    assert (cache / BPE_VOCAB_FILENAME).read_bytes() == b"not the vocabulary"


def _gzip_lines(path, lines):
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write("\n".join(lines).encode("utf-8"))
    return path


def test_invalid_vocabulary_files(tmp_path, bpe_vocab_path):
    plain = tmp_path / "plain.txt.gz"
    plain.write_text("i n\nt h\n")
    with pytest.raises(ValueError, match=str(plain)):
        ClipTokenizer(plain)

    short = _gzip_lines(tmp_path / "short.txt.gz", ["#version: 0.2"] + ["i n"] * 100)
    with pytest.raises(ValueError, match=r"short\.txt\.gz.*100 merge lines"):
        ClipTokenizer(short)

    lines = gzip.open(bpe_vocab_path).read().decode("utf-8").split("\n")[:49000]
    lines[5] = "threeparts x y"
    bad = _gzip_lines(tmp_path / "bad.txt.gz", lines)
    with pytest.raises(ValueError, match=r"bad\.txt\.gz.*line 6"):
        ClipTokenizer(bad)


# --------------------------------------------------------------------------- word level

CORPUS = ["A dog runs.", "the dog, the cat", "The cat sleeps"]


def test_word_tokenizer_ids_are_deterministic():
    wt = WordTokenizer.build(CORPUS)
    # (-frequency, word): the(3) cat(2) dog(2) then ',' '.' a runs sleeps (1 each).
    assert wt.state_dict()["words"] == ["the", "cat", "dog", ",", ".", "a", "runs", "sleeps"]
    assert (wt.vocab_size, wt.sot_token_id, wt.eot_token_id, wt.pad_token_id) == (12, 10, 11, 0)
    assert wt.encode("The DOG runs, fast!") == [2, 4, 8, 5, 1, 1]
    assert WordTokenizer.build(list(reversed(CORPUS))).state_dict() == wt.state_dict()
    assert WordTokenizer.build(CORPUS, min_freq=2).state_dict()["words"] == ["the", "cat", "dog"]


def test_word_tokenizer_batch_layout_and_eot_is_max():
    wt = WordTokenizer.build(CORPUS)
    texts = ["the cat", "", "the dog the cat the dog runs sleeps", "unknown zebra"]
    ids, mask = wt(texts, max_words=6)
    expected = [
        [10, 2, 3, 11, 0, 0],
        [10, 11, 0, 0, 0, 0],
        [10, 2, 4, 2, 3, 11],
        [10, 1, 1, 11, 0, 0],
    ]
    assert ids.tolist() == expected
    assert mask.tolist() == [[int(t != 0) for t in row] for row in expected]
    assert (ids.argmax(dim=1) == mask.sum(dim=1) - 1).all()
    assert wt.decode(ids[2], skip_special_tokens=True) == "the dog the cat"
    assert wt.decode(ids[3]) == "<|startoftext|> <unk> <unk> <|endoftext|> <pad> <pad>"
    with pytest.raises(ValueError, match="max_words"):
        wt("x", max_words=1)


def test_word_tokenizer_state_dict_round_trip():
    wt = WordTokenizer.build(CORPUS + ["numbers 42 and émoji 😀"])
    state = json.loads(json.dumps(wt.state_dict()))
    back = WordTokenizer.from_state_dict(state)
    text = "The cat runs 42 times 😀"
    assert back.encode(text) == wt.encode(text) and back.vocab_size == wt.vocab_size
    assert torch.equal(back([text])[0], wt([text])[0])
    with pytest.raises(ValueError, match="kind"):
        WordTokenizer.from_state_dict({"kind": "clip"})
    with pytest.raises(ValueError, match="distinct"):
        WordTokenizer(["a", "b", "a"])


def test_build_tokenizer(bpe_vocab_path):
    # The one tokenizer factory: the model config's ``tokenizer`` (clip / word) and vocabulary.
    from clip4clip.builder import build_tokenizer
    assert isinstance(build_tokenizer({"tokenizer": "clip", "bpe_vocab": str(bpe_vocab_path)}), ClipTokenizer)
    wt = build_tokenizer({"tokenizer": "word"}, train_texts=CORPUS)
    assert build_tokenizer({"tokenizer": "word"}, state=wt.state_dict()).state_dict() == wt.state_dict()
    with pytest.raises(ValueError, match="bert"):
        build_tokenizer({"tokenizer": "bert"})
