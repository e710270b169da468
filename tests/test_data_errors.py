"""Bad annotation files give one-line ValueErrors that name the file, the record/line and what was
expected; MSVD's pickle is read without letting it run code. The folders here hold annotation
files only: every check fires before any video is looked at, so nothing is decoded."""

import copyreg
import io
import json
import os
import pathlib
import pickle
import re
from pathlib import Path

import pytest

from clip4clip.core.errors import user_errors
from data import MSRVTTDataset, MSVDDataset
from data.readers.msrvtt import _load_captions
from data.readers.msvd import load_msvd_captions
from clip4clip.core.safe_pickle import UnsafePickleError, _PlainUnpickler, load_plain_pickle, loads_plain_pickle

SENTENCES = [{"video_id": f"video{i // 2}", "caption": f"a person does thing number {i}", "sen_id": i} for i in range(40)]
TEST_HEADER = "key,vid_key,video_id,sentence\n"


def one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, f"message spans lines: {msg!r}"
    return msg


def msrvtt_folder(root: Path, *, data=None, raw: bytes | None = None, train_csv: str | None = None,
                  test_csv: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if raw is None:
        raw = json.dumps({"videos": [], "sentences": SENTENCES} if data is None else data).encode()
    (root / "MSRVTT_data.json").write_bytes(raw)
    (root / "MSRVTT_train.9k.csv").write_text(train_csv if train_csv is not None else
                                              "video_id\n" + "".join(f"video{i}\n" for i in range(20)), encoding="utf-8")
    (root / "MSRVTT_JSFUSION_test.csv").write_text(test_csv if test_csv is not None else
                                                   TEST_HEADER + "ret0,msr0,video0,a cat sits\n", encoding="utf-8")
    return root


def train_error(root: Path) -> str:
    with pytest.raises(ValueError) as e:
        MSRVTTDataset(root, "train", image_size=8)
    return one_line_error(e)


# ---- MSRVTT_data.json --------------------------------------------------------------------------


def test_truncated_json_names_file_line_column_and_says_truncated(tmp_path):
    full = json.dumps({"videos": [], "sentences": SENTENCES}, indent=1).encode()
    cut = full.index(b"thing number 17") + 5  # inside a caption string
    root = msrvtt_folder(tmp_path / "d", raw=full[:cut])
    msg = train_error(root)
    path = re.escape(str(root / "MSRVTT_data.json"))
    assert re.fullmatch(path + r": not valid JSON \(line \d+, column \d+: Unterminated string starting at\); "
                        r"the file ends early: truncated\? Download or write it again", msg), msg
    line = full[:cut].count(b"\n") + 1
    assert f"(line {line}, column " in msg
    # cut between two records: still named as truncated
    cut = full.index(b"},", full.index(b"number 20")) + 2
    assert "ends early" in train_error(msrvtt_folder(tmp_path / "e", raw=full[:cut]))


def test_invalid_json_in_the_middle_is_not_called_truncated(tmp_path):
    raw = b'{"videos": [], "sentences": [{"video_id": "video0", "caption": "x"},, ]}'
    msg = train_error(msrvtt_folder(tmp_path / "d", raw=raw))
    assert msg.endswith("not valid JSON (line 1, column 69: Expecting value)"), msg
    assert "MSRVTT_data.json" in msg


def test_non_utf8_json(tmp_path):
    raw = json.dumps({"videos": [], "sentences": SENTENCES}).encode()
    at = raw.index(b"thing number 3")
    raw = raw[:at] + b"caf\xe9 " + raw[at:]  # latin-1 e-acute
    msg = train_error(msrvtt_folder(tmp_path / "d", raw=raw))
    assert msg == f"{tmp_path / 'd' / 'MSRVTT_data.json'}: not UTF-8 text (byte 0xe9 at offset {at + 3}, line 1); save the file as UTF-8"


def test_utf8_bom_is_accepted(tmp_path):
    raw = b"\xef\xbb\xbf" + json.dumps({"videos": [], "sentences": SENTENCES}).encode()
    caps = _load_captions(msrvtt_folder(tmp_path / "d", raw=raw) / "MSRVTT_data.json")
    assert len(caps) == 20 and caps["video3"] == ["a person does thing number 6", "a person does thing number 7"]


def test_empty_json_file(tmp_path):
    msg = train_error(msrvtt_folder(tmp_path / "d", raw=b"  \n"))
    assert msg == f"{tmp_path / 'd' / 'MSRVTT_data.json'}: empty file; expected JSON"


def _bad_record(i, **change):
    s = [dict(r) for r in SENTENCES]
    s[i].update(change)
    for k, v in change.items():
        if v is ...:
            del s[i][k]
    return {"videos": [], "sentences": s}


EXPECTED = '; expected {"video_id": str, "caption": str}'


@pytest.mark.parametrize("data, tail", [
    ([SENTENCES], ': top level is a JSON array; expected MSR-VTT\'s object {"videos": [...], "sentences": [...]}'),
    ({"videos": []}, ': no \'sentences\' field; expected MSR-VTT\'s object {"videos": [...], "sentences": [...]}'),
    ({"sentences": {"video0": "a caption"}}, ': \'sentences\' is a JSON object; expected a list of {"video_id": str, "caption": str}'),
    ({"sentences": SENTENCES[:17] + ["a caption"]}, ": sentences[17] is a JSON string" + EXPECTED),
    ({"sentences": SENTENCES[:3] + [None]}, ": sentences[3] is a JSON null" + EXPECTED),
    (_bad_record(17, caption=...), ": sentences[17]: no 'caption' field" + EXPECTED),
    (_bad_record(5, video_id=...), ": sentences[5]: no 'video_id' field" + EXPECTED),
    (_bad_record(9, caption=None), ": sentences[9]: 'caption' is a JSON null" + EXPECTED),
    (_bad_record(9, caption=12), ": sentences[9]: 'caption' is a JSON number 12" + EXPECTED),
    (_bad_record(9, caption=["a", "b"]), ': sentences[9]: \'caption\' is a JSON array ["a", "b"]' + EXPECTED),
    (_bad_record(2, video_id=None), ": sentences[2]: 'video_id' is a JSON null" + EXPECTED),
    (_bad_record(2, video_id=""), ": sentences[2]: 'video_id' is empty" + EXPECTED),
    (_bad_record(2, video_id=1.5), ": sentences[2]: 'video_id' is a JSON number 1.5" + EXPECTED),
    (_bad_record(2, video_id=True), ": sentences[2]: 'video_id' is a JSON boolean true" + EXPECTED),
], ids=["top-level-array", "no-sentences", "sentences-object", "record-string", "record-null", "no-caption",
        "no-video_id", "caption-null", "caption-number", "caption-array", "video_id-null", "video_id-empty",
        "video_id-float", "video_id-bool"])
def test_bad_json_shape_names_the_record(tmp_path, data, tail):
    root = msrvtt_folder(tmp_path / "d", data=data)
    assert train_error(root) == f"{root / 'MSRVTT_data.json'}{tail}"


def test_integer_video_ids_are_their_decimal_strings(tmp_path):
    data = {"sentences": [{"video_id": i // 2, "caption": f"c{i}"} for i in range(6)]}
    caps = _load_captions(msrvtt_folder(tmp_path / "d", data=data) / "MSRVTT_data.json")
    assert caps == {"0": ["c0", "c1"], "1": ["c2", "c3"], "2": ["c4", "c5"]}


def test_cli_prints_one_error_line_and_exits_2(tmp_path, capsys):
    root = msrvtt_folder(tmp_path / "d", data=_bad_record(17, caption=...))
    with pytest.raises(SystemExit) as e, user_errors():
        MSRVTTDataset(root, "train", image_size=8)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {root / 'MSRVTT_data.json'}: sentences[17]: no 'caption' field{EXPECTED}\n"


# ---- split CSVs --------------------------------------------------------------------------------


def test_non_utf8_csv(tmp_path):
    raw = (TEST_HEADER + "ret0,msr0,video0,a cat sits\nret1,msr1,video1,a caf").encode() + b"\xe9 scene\n"
    root = msrvtt_folder(tmp_path / "d")
    (root / "MSRVTT_JSFUSION_test.csv").write_bytes(raw)
    at = raw.index(b"\xe9")
    with pytest.raises(ValueError) as e:
        MSRVTTDataset(root, "test", image_size=8)
    assert one_line_error(e) == (f"{root / 'MSRVTT_JSFUSION_test.csv'}: not UTF-8 text (byte 0xe9 at offset "
                                 f"{at}, line 3); save the file as UTF-8")


def test_csv_row_with_a_missing_field_names_the_line(tmp_path):
    root = msrvtt_folder(tmp_path / "d", test_csv=TEST_HEADER + "ret0,msr0,video0,a cat sits\nret1,msr1,video1\n")
    with pytest.raises(ValueError) as e:
        MSRVTTDataset(root, "test", image_size=8)
    assert one_line_error(e) == (f"{root / 'MSRVTT_JSFUSION_test.csv'}: line 3: 3 field(s), the header has 4 "
                                 "(key,vid_key,video_id,sentence); no value for ['sentence']")


def test_csv_row_with_an_extra_field_names_the_line(tmp_path):
    root = msrvtt_folder(tmp_path / "d", test_csv=TEST_HEADER + "ret0,msr0,video0,a cat, sitting\n")
    with pytest.raises(ValueError) as e:
        MSRVTTDataset(root, "test", image_size=8)
    assert one_line_error(e) == (f"{root / 'MSRVTT_JSFUSION_test.csv'}: line 2: 5 fields, the header has 4 "
                                 "(key,vid_key,video_id,sentence); quote fields that contain commas")


def test_csv_empty_video_id_names_the_line(tmp_path):
    root = msrvtt_folder(tmp_path / "d", train_csv="video_id\nvideo0\n\n \nvideo2\n")
    msg = train_error(root)
    assert msg == f"{root / 'MSRVTT_train.9k.csv'}: line 4: empty 'video_id'; expected one row per train video"


@pytest.mark.parametrize("split, name, header, expected", [
    ("train", "MSRVTT_train.9k.csv", "video_id\n", "one row per train video"),
    ("test", "MSRVTT_JSFUSION_test.csv", TEST_HEADER, "one row per caption (key,vid_key,video_id,sentence)"),
    ("val", "MSRVTT_val.csv", TEST_HEADER + "\n", "one row per caption (key,vid_key,video_id,sentence)"),
], ids=["train", "test", "val"])
def test_header_only_csv_fails_when_the_dataset_is_built(tmp_path, split, name, header, expected):
    root = msrvtt_folder(tmp_path / "d")
    (root / name).write_text(header, encoding="utf-8")
    with pytest.raises(ValueError) as e:
        MSRVTTDataset(root, split, image_size=8)
    assert one_line_error(e) == f"{root / name}: no rows (header only); expected {expected}"


def test_empty_csv_file(tmp_path):
    root = msrvtt_folder(tmp_path / "d", train_csv="")
    assert train_error(root) == (f"{root / 'MSRVTT_train.9k.csv'}: empty file; expected a header line with columns "
                                 "['video_id'], then one row per train video")


def test_csv_with_bom_and_quoted_commas_is_read(tmp_path):
    root = msrvtt_folder(tmp_path / "d", test_csv="\ufeff" + TEST_HEADER + 'ret0,msr0,video0,"a cat, sitting"\n')
    with pytest.raises(FileNotFoundError, match=r"video0\{\.mp4,\.webm\}"):  # got past the CSV: no videos here
        MSRVTTDataset(root, "test", image_size=8)


# ---- MSVD: raw-captions.pkl and the list files -------------------------------------------------


class _Payload:
    """Pickles as ``func(*args)``: what a crafted raw-captions.pkl would do."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}"
    return {
        "os.system": pickle.dumps({"vid": _Payload(os.system, cmd)}),
        "builtins.open": pickle.dumps({"vid": [_Payload(open, str(marker), "w")]}, protocol=2),
        "Path.touch": pickle.dumps(_Payload(getattr(pathlib.Path(marker), "touch").__func__, pathlib.Path(marker))),
        "protocol 0 GLOBAL": f"cposix\nsystem\n(S'{cmd}'\ntR.".encode(),
        "protocol 0 INST": f"(S'{cmd}'\niposix\nsystem\n.".encode(),
    }


def msvd_folder(root: Path, captions: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        (root / f"{split}_list.txt").write_text("vid\n", encoding="utf-8")
    (root / "raw-captions.pkl").write_bytes(captions)
    return root


def test_the_payloads_do_run_code_under_plain_pickle(tmp_path):
    """Control: each payload really creates the marker when read with pickle.loads."""
    for what, payload in _payloads(tmp_path / "m").items():
        (tmp_path / "m").unlink(missing_ok=True)
        try:
            pickle.loads(payload)
        except Exception:
            pass  # some return values are not what the payload wraps; the side effect is the point
        assert (tmp_path / "m").exists(), what


@pytest.mark.parametrize("what", ["os.system", "builtins.open", "Path.touch", "protocol 0 GLOBAL", "protocol 0 INST"])
def test_crafted_pickle_runs_no_code_and_names_the_file(tmp_path, what):
    marker = tmp_path / "marker"
    root = msvd_folder(tmp_path / "msvd", _payloads(marker)[what])
    with pytest.raises(ValueError) as e:
        MSVDDataset(root, "train", image_size=8)
    msg = one_line_error(e)
    assert not marker.exists()
    refused = {"os.system": "posix.system", "builtins.open": "io.open", "Path.touch": "pathlib.Path.touch",
               "protocol 0 GLOBAL": "posix.system", "protocol 0 INST": "posix.system"}[what]
    if what in ("builtins.open", "Path.touch"):  # the module pickle records depends on the Python version
        assert re.fullmatch(re.escape(f"{root / 'raw-captions.pkl'}: refused to unpickle ") + r"'[\w.]+'"
                            + re.escape(": raw-captions.pkl may hold only dicts, lists and strings "
                                        "(a pickle that names a class or function can run code)"), msg), msg
    else:
        assert msg == (f"{root / 'raw-captions.pkl'}: refused to unpickle {refused!r}: raw-captions.pkl may hold only "
                       "dicts, lists and strings (a pickle that names a class or function can run code)")


@pytest.mark.parametrize("cached", [False, True])
def test_copyreg_extension_codes_are_refused(tmp_path, cached):
    """EXT opcodes name a global by a number registered with copyreg; once resolved, the C
    unpickler serves it from a cache without calling find_class, so they are refused up front."""
    code = 0x7FFF0001
    copyreg.add_extension("posix", "system", code)
    try:
        payload = pickle.dumps(_Payload(os.system, f"touch {tmp_path / 'm'}"), protocol=2)
        assert b"posix" not in payload  # EXT4 opcode: no module name in the file
        if cached:
            assert pickle.loads(pickle.dumps(os.system, protocol=2)) is os.system  # fills copyreg's cache
        with pytest.raises(ValueError) as e:
            loads_plain_pickle(payload, str(tmp_path / "x.pkl"))
    finally:
        copyreg.remove_extension("posix", "system", code)
    assert one_line_error(e).startswith(f"{tmp_path / 'x.pkl'}: refused to unpickle 'posix.system': x.pkl may hold only ")
    assert not (tmp_path / "m").exists()


def test_unsafe_pickle_error_and_other_containers(tmp_path):
    with pytest.raises(UnsafePickleError):  # what the loader turns into the one-line ValueError
        _PlainUnpickler(io.BytesIO(pickle.dumps(Path("x")))).load()
    plain = {"a": [("t", 1, 2.5, None, True, -(2**70))], "b": {"c": []}, "é": ()}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        p = tmp_path / f"p{protocol}.pkl"
        p.write_bytes(pickle.dumps(plain, protocol=protocol))
        assert load_plain_pickle(p) == plain
    # sets and bytes have opcodes of their own from protocol 5 (earlier protocols name a global)
    more = {"b": {1, 2}, "c": frozenset({"x"}), "d": b"raw", "e": bytearray(b"z")}
    (tmp_path / "p.pkl").write_bytes(pickle.dumps(more, protocol=5))
    assert load_plain_pickle(tmp_path / "p.pkl") == more
    (tmp_path / "p.pkl").write_bytes(pickle.dumps(more, protocol=2))
    with pytest.raises(ValueError, match=r"p.pkl: refused to unpickle '__builtin__\.set'"):
        load_plain_pickle(tmp_path / "p.pkl")


@pytest.mark.parametrize("raw, reason", [
    (b"", "empty file"),
    (pickle.dumps({"vid": [["a", "dog"]] * 50})[:40], r"truncated or not a pickle: \w+: .+"),
    (b"this is not a pickle at all", r"truncated or not a pickle: UnpicklingError: .+"),
    (b"\x80\x05\x95", r"truncated or not a pickle: \w+: .+"),
], ids=["empty", "truncated", "garbage", "header-only"])
def test_truncated_or_garbage_pickle_is_one_line_naming_the_file(tmp_path, raw, reason):
    root = msvd_folder(tmp_path / "msvd", raw)
    with pytest.raises(ValueError) as e:
        MSVDDataset(root, "test", image_size=8)
    assert re.fullmatch(re.escape(f"{root / 'raw-captions.pkl'}: cannot unpickle (") + reason + r"\)", one_line_error(e))


def test_plain_msvd_pickles_still_load(tmp_path):
    raw = {"v1": [["a", "dog", "runs"], ("two", "words")], "v2": ["  a plain   string "]}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        p = tmp_path / f"c{protocol}.pkl"
        p.write_bytes(pickle.dumps(raw, protocol=protocol))
        assert load_msvd_captions(p) == {"v1": ["a dog runs", "two words"], "v2": ["a plain string"]}


def test_msvd_list_file_errors(tmp_path):
    root = msvd_folder(tmp_path / "msvd", pickle.dumps({"vid": [["a", "b"]]}))
    (root / "val_list.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError) as e:
        MSVDDataset(root, "val", image_size=8)
    assert one_line_error(e) == f"{root / 'val_list.txt'}: no video ids (empty file); expected one video id per line"
    (root / "test_list.txt").write_bytes(b"vid\nv\xff2\n")
    with pytest.raises(ValueError) as e:
        MSVDDataset(root, "test", image_size=8)
    assert one_line_error(e) == f"{root / 'test_list.txt'}: not UTF-8 text (byte 0xff at offset 5, line 2); save the file as UTF-8"


def test_non_utf8_frame_cache_manifest_names_the_file(tmp_path):
    from data.frames.store import MANIFEST, load_manifest
    (tmp_path / MANIFEST).write_bytes(b'{"format": "\xff\xfe"}')
    with pytest.raises(ValueError, match=f"{MANIFEST}: not UTF-8"):
        load_manifest(tmp_path)
