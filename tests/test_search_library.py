"""Search: what a library scan indexes. Symbolic links (loops, dangling, outside, duplicates,
folders), undecodable names, and a library full of bad files that still indexes its good ones."""
import os
import shutil

import search_utils as su
from search_utils import base, run  # noqa: F401  (session fixtures)
from clip4clip.search import build_index
from clip4clip.search.library import scan_library


def _messy_links(lib):
    """Links of every kind in ``lib`` (which holds real.mp4 and sub/nested.mp4)."""
    os.symlink("loop.mp4", lib / "loop.mp4")                       # a.mp4 -> a.mp4
    os.symlink("ping.mp4", lib / "pong.mp4")                       # two links pointing at each other
    os.symlink("pong.mp4", lib / "ping.mp4")
    os.symlink("missing.mp4", lib / "dangling.mp4")
    os.symlink(su.real_videos() / "arm_wrestling.mp4", lib / "outside.mp4")
    os.symlink("real.mp4", lib / "again.mp4")                      # a second name for real.mp4
    os.symlink("sub/nested.mp4", lib / "a_link_to_nested.mp4")     # sorts before sub/: still one video
    (lib / ".hidden").mkdir()
    shutil.copy2(lib / "real.mp4", lib / ".hidden" / "only_here.mp4")
    os.symlink(".hidden/only_here.mp4", lib / "shown.mp4")        # the only visible name of a file
    os.symlink("sub", lib / "folder_link")                         # folders are not followed
    os.symlink(".", lib / "sub" / "self")                          # a folder loop


def test_symlinks_are_followed_inside_the_library_once_and_bad_ones_reported(tmp_path):
    lib = tmp_path / "lib"
    (lib / "sub").mkdir(parents=True)
    (lib / "real.mp4").write_bytes(b"0" * 10)
    (lib / "sub" / "nested.mp4").write_bytes(b"1" * 20)
    _messy_links(lib)
    files, skipped = scan_library(lib)
    assert [f.relpath for f in files] == ["real.mp4", "shown.mp4", "sub/nested.mp4"]
    assert [f.size for f in files] == [10, 10, 20]  # a link has its target's size (and time)
    why = {s.relpath: s.reason for s in skipped}
    assert set(why) == {"loop.mp4", "ping.mp4", "pong.mp4", "dangling.mp4", "outside.mp4", "again.mp4",
                        "a_link_to_nested.mp4", "folder_link", "sub/self"}
    assert "loop" in why["loop.mp4"] and "loop" in why["ping.mp4"] and "loop" in why["pong.mp4"]
    assert "dangling" in why["dangling.mp4"] and "missing.mp4" in why["dangling.mp4"]
    assert "outside the library" in why["outside.mp4"]
    assert why["again.mp4"] == "symbolic link to real.mp4, which is indexed already"
    assert why["a_link_to_nested.mp4"] == "symbolic link to sub/nested.mp4, which is indexed already"
    assert "not followed" in why["folder_link"] and "not followed" in why["sub/self"]


def test_a_fifo_named_like_a_video_is_reported_not_silently_skipped(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "real.mp4").write_bytes(b"0" * 10)
    os.mkfifo(lib / "pipe.mp4")
    files, skipped = scan_library(lib)  # returns at once: the FIFO is never opened
    assert [f.relpath for f in files] == ["real.mp4"]
    assert {s.relpath: s.reason for s in skipped} == {"pipe.mp4": "not a regular file (a FIFO, socket or device)"}


def test_a_library_of_bad_files_indexes_every_good_video_and_names_every_bad_one(tmp_path, run):
    lib = tmp_path / "lib"
    (lib / "sub").mkdir(parents=True)
    shutil.copy2(su.real_videos() / "arm_wrestling.mp4", lib / "real.mp4")
    videos = sorted((run["data"] / "videos").glob("*.mp4"))
    shutil.copy2(videos[0], lib / "sub" / "nested.mp4")
    _messy_links(lib)
    (lib / "empty.mp4").write_bytes(b"")                                         # zero bytes
    (lib / "text.mp4").write_text("this is not a video\n")                      # text named .mp4
    shutil.copyfile(su.real_videos() / "pool_cleaning.mp4", lib / "truncated.mp4")
    with open(lib / "truncated.mp4", "r+b") as f:
        f.truncate(os.path.getsize(lib / "truncated.mp4") // 3)  # its 'moov' index is at the end
    shutil.copy2(videos[1], os.fsencode(lib) + b"/caf\xe9.mp4")                  # Latin-1 name, not UTF-8
    report = build_index(lib, tmp_path / "index", su.encoder(run["checkpoint"]), progress=False, proxies="off")
    assert report.added == ["real.mp4", "shown.mp4", "sub/nested.mp4"] and report.num_videos == 3
    failed, skipped = dict(report.failed), dict(report.skipped)
    assert set(failed) == {"empty.mp4", "text.mp4", "truncated.mp4"}
    assert {"loop.mp4", "ping.mp4", "pong.mp4", "dangling.mp4", "outside.mp4", "again.mp4"} <= set(skipped)
    undecodable = [p for p, why in skipped.items() if "UTF-8" in why]
    assert undecodable == [repr("caf\udce9.mp4")]
    summary = report.summary()
    for name in [*failed, *skipped]:
        assert name in summary, name
