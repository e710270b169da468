"""Text tokenizers: CLIP's byte-level BPE and a word-level tokenizer for from-scratch models.

Both produce the CLIP4Clip text input: ``[SOT] + first max_words-2 tokens + [EOT]``, zero
padded to ``max_words``, with an attention mask that is 1 on SOT..EOT. The text tower pools the
feature at ``argmax(input_ids)``, so EOT must be the highest id in each vocabulary.

``ClipTokenizer`` reproduces OpenAI CLIP's ``simple_tokenizer.py`` id for id (same cleaning, same
regex, same merge order), with an O(n log n) merge loop so that pathological inputs (one
10,000-letter "word") stay fast, and a bounded word cache.
"""

from __future__ import annotations

import functools
import gzip
import heapq
import html
import os
import re as std_re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import ftfy
import regex
import torch

from .core.download import DownloadError, weights_cache_dir, ensure_file

__all__ = [
    "BPE_VOCAB_ENV",
    "BPE_VOCAB_FILENAME",
    "BPE_VOCAB_SHA256",
    "BPE_VOCAB_URL",
    "ClipTokenizer",
    "WordTokenizer",
    "bytes_to_unicode",
    "resolve_bpe_vocab",
]

BPE_VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_VOCAB_URL = "https://raw.githubusercontent.com/openai/CLIP/main/clip/bpe_simple_vocab_16e6.txt.gz"
BPE_VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
BPE_VOCAB_ENV = "CLIP4CLIP_BPE_VOCAB"

SOT_TEXT = "<|startoftext|>"
EOT_TEXT = "<|endoftext|>"
# CLIP keeps merges[1:49152-256-2+1] of the file (line 0 is a version header): 48894 merges,
# which with 512 byte symbols and 2 specials gives the 49408-row token embedding.
_NUM_MERGES = 49152 - 256 - 2
_END_OF_WORD = "</w>"

# The same pattern as CLIP: specials, English contractions, letter runs, single digits, and
# runs of everything else that is not whitespace.
_WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
# CLIP imports `regex as re`, so its whitespace rule uses regex's \s (Unicode White_Space),
# which differs from the standard library's (e.g. on \x1c-\x1f).
_WHITESPACE = regex.compile(r"\s+")
_SURROGATES = std_re.compile("[\ud800-\udfff]")

# Words longer than this are not cached: the cache stays small even for adversarial input.
_CACHE_MAX_ENTRIES = 10_000
_CACHE_MAX_WORD_CHARS = 100


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 table mapping each byte 0..255 to a printable unicode character.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to 256, 257, ... in byte
    order, so BPE symbols never contain whitespace or control characters. The dict's insertion
    order (printable bytes first) defines the first 256 token ids.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values, code_points = list(printable), list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            code_points.append(256 + extra)
            extra += 1
    return dict(zip(byte_values, (chr(c) for c in code_points)))


def _clean_text(text: str) -> str:
    """CLIP's cleaning: ftfy, html-unescape twice, strip, collapse whitespace, lower-case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    text = _WHITESPACE.sub(" ", text).strip().lower()
    # ftfy already replaces lone surrogates; this guards the utf-8 encode below regardless.
    return _SURROGATES.sub("\ufffd", text)


def _check_str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


def _check_max_words(max_words: object) -> int:
    if isinstance(max_words, bool) or not isinstance(max_words, int):
        raise TypeError(f"max_words must be an int, got {type(max_words).__name__}")
    if max_words < 3:
        raise ValueError(f"max_words must be >= 3 (SOT + at least one token + EOT), got {max_words}")
    return max_words


def _ids_to_list(ids: Iterable[int] | torch.Tensor) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"decode expects a 1-D sequence of ids, got shape {tuple(ids.shape)}")
        return [int(i) for i in ids.tolist()]
    return [int(i) for i in ids]


class _Tokenizer:
    """Shared CLIP4Clip batching; subclasses provide ``_encode(text, limit)`` and the ids."""

    pad_token_id = 0

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def sot_token_id(self) -> int:
        raise NotImplementedError

    @property
    def eot_token_id(self) -> int:
        raise NotImplementedError

    def _encode(self, text: str, limit: int | None) -> list[int]:
        """Token ids of ``text``; with ``limit``, at least the first ``limit`` ids (exact)."""
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without SOT/EOT."""
        return self._encode(_check_str(text, "text"), None)

    def __call__(
        self, texts: str | Sequence[str], max_words: int = 32, return_lengths: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """Tokenize a batch into the CLIP4Clip text input.

        Args:
            texts: one string or a list/tuple of B strings.
            max_words: sequence length L (CLIP4Clip uses 32); at least 3.
            return_lengths: also return each text's token count before cutting, capped at
                L - 1 (so ``lengths > L - 2`` means the text was cut, ``0`` that it was empty).

        Returns:
            input_ids: LongTensor [B, L]: SOT, the first L-2 tokens, EOT, then zeros.
            attention_mask: LongTensor [B, L]: 1 on SOT..EOT, 0 on padding.
            lengths: LongTensor [B], only with ``return_lengths``.
        """
        max_words = _check_max_words(max_words)
        if isinstance(texts, str):
            texts = [texts]
        elif not isinstance(texts, (list, tuple)):
            raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}")
        for i, text in enumerate(texts):
            _check_str(text, f"texts[{i}]")

        budget = max_words - 2
        rows, masks, counts = [], [], []
        for text in texts:
            # One token past the budget tells whether anything was cut, at no extra cost.
            ids = self._encode(text, budget + 1)
            counts.append(min(len(ids), budget + 1))
            tokens = [self.sot_token_id] + ids[:budget] + [self.eot_token_id]
            pad = max_words - len(tokens)
            rows.append(tokens + [self.pad_token_id] * pad)
            masks.append([1] * len(tokens) + [0] * pad)
        # Python lists, then one tensor each: per-row tensor writes cost more than the encoding.
        input_ids = torch.tensor(rows, dtype=torch.long).view(len(texts), max_words)
        attention_mask = torch.tensor(masks, dtype=torch.long).view(len(texts), max_words)
        lengths = torch.tensor(counts, dtype=torch.long)
        return (input_ids, attention_mask, lengths) if return_lengths else (input_ids, attention_mask)

    def _strip_special(self, ids: list[int]) -> list[int]:
        """Drop SOT, and everything from the first EOT on (the padding after it)."""
        if self.eot_token_id in ids:
            ids = ids[: ids.index(self.eot_token_id)]
        return [i for i in ids if i != self.sot_token_id]


# --------------------------------------------------------------------------- CLIP BPE


def resolve_bpe_vocab(
    vocab_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Locate CLIP's ``bpe_simple_vocab_16e6.txt.gz``, downloading it if needed.

    Order: ``vocab_path`` -> ``$CLIP4CLIP_BPE_VOCAB`` -> ``weights_cache_dir(cache_dir)/
    bpe_simple_vocab_16e6.txt.gz`` (checked against the official SHA256) -> download from
    ``url`` (default: the openai/CLIP repository) into that cache path.

    Raises:
        FileNotFoundError: ``vocab_path`` or the environment variable names a missing file
            (there is no fall-through: a path the user gave must be the one used).
        ChecksumError: the cached or downloaded file has the wrong SHA256.
        DownloadError: no local copy and the download failed; says where to put the file.
    """
    if vocab_path is not None and str(vocab_path) != "":
        path = Path(vocab_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"BPE vocabulary not found at vocab_path={str(vocab_path)!r}")
        return path
    env_path = os.environ.get(BPE_VOCAB_ENV)
    if env_path:
        path = Path(env_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"BPE vocabulary not found at {path} (from ${BPE_VOCAB_ENV}); "
                f"fix or unset the variable"
            )
        return path

    url = url or BPE_VOCAB_URL
    sha256 = sha256 or BPE_VOCAB_SHA256
    dest = weights_cache_dir(cache_dir) / BPE_VOCAB_FILENAME
    try:
        return ensure_file(url, dest, sha256=sha256, progress=progress)
    except DownloadError as e:
        if type(e) is not DownloadError:  # ChecksumError already says what to do
            raise
        raise DownloadError(
            f"CLIP's BPE vocabulary is not available locally and could not be downloaded: {e} "
            f"Alternatively pass vocab_path=... or set ${BPE_VOCAB_ENV} to the file's location."
        ) from e


@functools.lru_cache(maxsize=4)
def _load_bpe_tables(path: str, _size: int, _mtime_ns: int):
    """Parse a merges file once per (path, size, mtime): tokenizers share the read-only tables."""
    try:
        with gzip.open(path, "rb") as f:
            lines = f.read().decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{path} is not a valid CLIP BPE vocabulary (expected a gzip-compressed UTF-8 merges "
            f"file like {BPE_VOCAB_FILENAME}): {e}"
        ) from e
    if not lines or "#version" not in lines[0]:
        raise ValueError(
            f"{path} is not a valid CLIP BPE vocabulary: its first line should be a "
            f"'#version' header, got {lines[0][:80]!r}"
        )
    merge_lines = lines[1 : _NUM_MERGES + 1]
    if len(merge_lines) < _NUM_MERGES:
        raise ValueError(
            f"{path} is not a valid CLIP BPE vocabulary: it has {len(merge_lines)} merge lines, "
            f"expected at least {_NUM_MERGES}"
        )
    merges = []
    for lineno, line in enumerate(merge_lines, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(
                f"{path} is not a valid CLIP BPE vocabulary: line {lineno} should be two "
                f"symbols separated by a space, got {line[:80]!r}"
            )
        merges.append(tuple(parts))

    byte_symbols = list(bytes_to_unicode().values())
    vocab = byte_symbols + [s + _END_OF_WORD for s in byte_symbols]
    vocab += ["".join(m) for m in merges]
    vocab += [SOT_TEXT, EOT_TEXT]
    # dict(zip(...)) as CLIP does: if a symbol were listed twice, the later id wins.
    encoder = dict(zip(vocab, range(len(vocab))))
    ranks = dict(zip(merges, range(len(merges))))
    return vocab, encoder, ranks


class ClipTokenizer(_Tokenizer):
    """OpenAI CLIP's byte-level BPE tokenizer (49408 ids; SOT 49406, EOT 49407, pad 0).

    Args:
        vocab_path: path to ``bpe_simple_vocab_16e6.txt.gz``; see ``resolve_bpe_vocab`` for
            what happens when it is None.
        cache_dir: cache folder for the download (default ``weights_cache_dir()``).

    ``tokenizer(texts, max_words=32)`` gives the CLIP4Clip input (see ``_Tokenizer.__call__``);
    ``encode`` and ``decode`` match ``SimpleTokenizer.encode``/``decode``.
    """

    def __init__(
        self,
        vocab_path: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
    ):
        path = resolve_bpe_vocab(vocab_path, cache_dir).resolve()
        stat = path.stat()
        self.vocab_path = path
        self._vocab, self._encoder, self._ranks = _load_bpe_tables(
            str(path), stat.st_size, stat.st_mtime_ns
        )
        byte_encoder = bytes_to_unicode()
        # utf-8 bytes viewed as latin-1 chars -> BPE byte symbols, in one str.translate call.
        self._byte_table = {b: c for b, c in byte_encoder.items()}
        self._byte_decoder = {c: b for b, c in byte_encoder.items()}
        self._specials = {SOT_TEXT: self._encoder[SOT_TEXT], EOT_TEXT: self._encoder[EOT_TEXT]}
        self._cache: dict[str, list[int]] = {}

    def __repr__(self) -> str:
        return f"ClipTokenizer(vocab_path={str(self.vocab_path)!r}, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        return len(self._encoder)

    @property
    def sot_token_id(self) -> int:
        return self._specials[SOT_TEXT]

    @property
    def eot_token_id(self) -> int:
        return self._specials[EOT_TEXT]

    def _bpe(self, symbols: str) -> list[str]:
        """Apply the merges to one word (a string of byte symbols); returns its BPE symbols.

        Same result as CLIP's loop (repeatedly merge every occurrence, left to right, of the
        lowest-ranked adjacent pair) but in O(n log n): a doubly linked list of symbols, a heap
        of pair ranks and, per pair, the positions where it was formed. Stale positions are
        skipped when the pair is popped, so nothing is ever searched for.
        """
        tokens: list[str | None] = list(symbols[:-1]) + [symbols[-1] + _END_OF_WORD]
        n = len(tokens)
        if n == 1:
            return tokens  # type: ignore[return-value]
        ranks = self._ranks
        nxt = list(range(1, n + 1))  # n means "no next symbol"
        prv = list(range(-1, n - 1))
        positions: dict[tuple[str, str], list[int]] = {}
        heap: list[tuple[int, tuple[str, str]]] = []

        def note_pair(i: int) -> None:
            j = nxt[i]
            if j < n:
                pair = (tokens[i], tokens[j])
                rank = ranks.get(pair)  # type: ignore[arg-type]
                if rank is not None:
                    seen = positions.get(pair)  # type: ignore[arg-type]
                    if seen is None:
                        positions[pair] = [i]  # type: ignore[index]
                        heapq.heappush(heap, (rank, pair))  # type: ignore[arg-type]
                    else:
                        seen.append(i)

        for i in range(n - 1):
            note_pair(i)
        remaining = n
        while heap and remaining > 1:
            _, pair = heapq.heappop(heap)
            first, second = pair
            merged = first + second
            # Left to right, like CLIP's scan; an occurrence whose left symbol was consumed by
            # the previous merge ("aaa" with a+a) fails the check and is skipped.
            for i in sorted(positions.pop(pair)):
                j = nxt[i]
                if tokens[i] != first or j >= n or tokens[j] != second:
                    continue
                tokens[i] = merged
                tokens[j] = None
                nxt[i] = nxt[j]
                if nxt[j] < n:
                    prv[nxt[j]] = i
                remaining -= 1
                if prv[i] >= 0:
                    note_pair(prv[i])
                note_pair(i)

        out = []
        i = 0  # the first symbol is never consumed: merges keep the left position
        while i < n:
            out.append(tokens[i])
            i = nxt[i]
        return out  # type: ignore[return-value]

    def _word_ids(self, word: str) -> list[int]:
        special = self._specials.get(word)
        if special is not None:
            return [special]
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols = word.encode("utf-8").decode("latin-1").translate(self._byte_table)
        ids = [self._encoder[s] for s in self._bpe(symbols)]
        if len(word) <= _CACHE_MAX_WORD_CHARS:
            if len(self._cache) >= _CACHE_MAX_ENTRIES:
                # Evict the oldest entry (dicts keep insertion order); races between threads
                # can at worst evict a different entry.
                try:
                    del self._cache[next(iter(self._cache))]
                except (KeyError, RuntimeError, StopIteration):
                    pass
            self._cache[word] = ids
        return ids

    def _encode(self, text: str, limit: int | None) -> list[int]:
        ids: list[int] = []
        for match in _WORD_PATTERN.finditer(_clean_text(text)):
            ids.extend(self._word_ids(match.group()))
            # Every word yields >= 1 id and later words only append, so stopping here is exact.
            if limit is not None and len(ids) >= limit:
                break
        return ids

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """Text of a sequence of ids, exactly as CLIP's ``SimpleTokenizer.decode``.

        ``</w>`` becomes a space (so the result usually ends with one), invalid utf-8 is
        replaced by U+FFFD, and SOT/EOT decode to their literal text. With
        ``skip_special_tokens=True`` (for rows of the batch call) SOT is dropped and decoding
        stops at the first EOT, which also drops the zero padding after it (id 0 is the
        ordinary symbol "!", so padding cannot be recognised otherwise).
        """
        ids = _ids_to_list(ids)
        if skip_special_tokens:
            ids = self._strip_special(ids)
        for i in ids:
            if not 0 <= i < len(self._vocab):
                raise ValueError(f"token id {i} is outside the vocabulary [0, {len(self._vocab)})")
        symbols = "".join(self._vocab[i] for i in ids)
        raw = bytearray(self._byte_decoder[c] for c in symbols)
        return raw.decode("utf-8", errors="replace").replace(_END_OF_WORD, " ")


# --------------------------------------------------------------------------- word level

_WORD_SPLIT = std_re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


class WordTokenizer(_Tokenizer):
    """Word-level tokenizer for models trained from scratch (no download).

    Ids: 0 = pad, 1 = unk, 2.. = the words, SOT = vocab_size-2, EOT = vocab_size-1 (the highest,
    because the text tower pools at ``argmax(input_ids)``). Text is lower-cased and split into
    runs of ``[a-z0-9]`` and single other non-space characters.

    Args:
        words: the vocabulary in id order starting at id 2 (distinct, non-empty strings).
    """

    PAD, UNK, SOT, EOT = "<pad>", "<unk>", SOT_TEXT, EOT_TEXT
    unk_token_id = 1

    def __init__(self, words: Sequence[str]):
        words = list(words)
        for i, w in enumerate(words):
            if not isinstance(w, str) or not w:
                raise ValueError(f"words[{i}] must be a non-empty str, got {w!r}")
        if len(set(words)) != len(words):
            dupes = sorted(w for w, c in Counter(words).items() if c > 1)
            raise ValueError(f"words must be distinct, repeated: {dupes[:10]}")
        self._words = [self.PAD, self.UNK] + words + [self.SOT, self.EOT]
        self._ids = {w: i for i, w in enumerate(words, start=2)}

    @classmethod
    def build(cls, texts: Iterable[str], min_freq: int = 1) -> "WordTokenizer":
        """Vocabulary of the words occurring at least ``min_freq`` times in ``texts``.

        Words are ordered by (-frequency, word), so the same corpus always gives the same ids.
        """
        counts: Counter[str] = Counter()
        for i, text in enumerate(texts):
            counts.update(cls.split(_check_str(text, f"texts[{i}]")))
        kept = [w for w, c in counts.items() if c >= min_freq]
        kept.sort(key=lambda w: (-counts[w], w))
        return cls(kept)

    @staticmethod
    def split(text: str) -> list[str]:
        """Lower-case ``text`` and split it into words (see the class docstring)."""
        return _WORD_SPLIT.findall(text.lower())

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        return len(self._words)

    @property
    def sot_token_id(self) -> int:
        return len(self._words) - 2

    @property
    def eot_token_id(self) -> int:
        return len(self._words) - 1

    def _encode(self, text: str, limit: int | None) -> list[int]:
        words = self.split(text)
        if limit is not None:
            words = words[:limit]
        return [self._ids.get(w, self.unk_token_id) for w in words]

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """Words joined by single spaces; with ``skip_special_tokens``, SOT, pad and
        everything from the first EOT on are dropped (unk stays, as ``<unk>``)."""
        ids = _ids_to_list(ids)
        if skip_special_tokens:
            ids = [i for i in self._strip_special(ids) if i != self.pad_token_id]
        for i in ids:
            if not 0 <= i < len(self._words):
                raise ValueError(f"token id {i} is outside the vocabulary [0, {len(self._words)})")
        return " ".join(self._words[i] for i in ids)

    def state_dict(self) -> dict:
        """JSON-able description of the vocabulary, e.g. to store inside a checkpoint."""
        return {"kind": "word", "version": 1, "words": list(self._words[2:-2])}

    @staticmethod
    def state_problems(state: Any) -> list[str]:
        """What keeps ``state`` from being a ``state_dict`` of this class, one phrase each (the
        first problem only, for the vocabulary); [] when ``from_state_dict`` accepts it. Lets a
        loader refuse a checkpoint before writing or building anything from it."""
        if not isinstance(state, dict) or state.get("kind") != "word":
            got = state.get("kind") if isinstance(state, dict) else type(state).__name__
            return [f"not a WordTokenizer state dict: expected kind 'word', got {got!r:.40}"]
        if state.get("version") != 1:
            return [f"unsupported WordTokenizer state version {state.get('version')!r:.40}, expected 1"]
        words = state.get("words")
        if not isinstance(words, list):
            return [f"WordTokenizer state 'words' must be a list, got {type(words).__name__}"]
        bad = next((i for i, w in enumerate(words) if not isinstance(w, str) or not w), None)
        if bad is not None:
            return [f"words[{bad}] must be a non-empty str, got {words[bad]!r:.40}"]
        if len(set(words)) != len(words):
            return [f"words must be distinct, repeated: {sorted(w for w, c in Counter(words).items() if c > 1)[:10]}"]
        return []

    @classmethod
    def from_state_dict(cls, state: dict) -> "WordTokenizer":
        """Inverse of ``state_dict``."""
        problems = cls.state_problems(state)
        if problems:
            raise ValueError(problems[0])
        return cls(state["words"])
