"""Search web page (Flask test client): pages, JSON API, media with HTTP Range, missing files,
and the security rules (no path traversal, escaping, bounded queries)."""
import shutil

import markupsafe
import pytest

import search_utils as su
from search_utils import base, run  # noqa: F401  (session fixtures)
from clip4clip.search import SearchIndex, build_index
from clip4clip.search.query import MAX_QUERY_CHARS
from clip4clip.search.web import create_app


@pytest.fixture(scope="session")
def synth_client(base, run):
    lib = su.synthetic_library(base, run["data"])
    index = SearchIndex.open(su.built_index("synthetic_index", lib, run["checkpoint"], base))
    return create_app(index).test_client(), index


@pytest.fixture(scope="session")
def real_ro(base, run):
    """The real clips where they are (read-only), indexed once for the tests that only read."""
    index = SearchIndex.open(su.built_index("real_index", su.real_videos(), run["checkpoint"], base))
    ids = {h.path: h.id for h in index.search("x", k=10)}
    return {"client": create_app(index).test_client(), "index": index, "ids": ids}


@pytest.fixture()
def real(tmp_path, run):
    """A private copy of the real clips (tests delete files from it) and its index."""
    lib = tmp_path / "lib"
    shutil.copytree(su.real_videos(), lib, ignore=shutil.ignore_patterns("*.md"))
    out = tmp_path / "index"
    build_index(lib, out, su.encoder(run["checkpoint"]), progress=False)
    index = SearchIndex.open(out)
    ids = {h.path: h.id for h in index.search("x", k=10)}
    return {"client": create_app(index).test_client(), "index": index, "lib": lib, "out": out, "ids": ids}


def test_empty_query_gets_a_helpful_page_with_examples(synth_client):
    client, index = synth_client
    for url in ("/", "/?q=", "/?q=%20%20%20"):
        r = client.get(url)
        assert r.status_code == 200
        body = r.get_data(as_text=True)
        assert "Search 24 videos by describing them" in body
        assert "Captions from this library to try" in body and 'href="/?q=a+' in body


def test_results_page_shows_thumbnails_scores_moments_and_caption_match(synth_client, run):
    client, index = synth_client
    caption = next(iter(su.split_captions(run["data"]).values()))
    r = client.get("/", query_string={"q": caption, "k": 5})
    assert r.status_code == 200
    body = r.get_data(as_text=True)
    hits = index.search(caption, k=5)
    for h in hits:
        assert f'src="/thumb/{h.id}"' in body
        assert f'href="/video/{h.id}?t={h.moment}&amp;q=' in body
        assert f"{h.score:.3f}" in body
    assert body.count('class="card') == 5
    assert "Caption match" in body and "FTS5" in body
    t = client.get(f"/thumb/{hits[0].id}")
    assert t.status_code == 200 and t.mimetype == "image/jpeg" and t.data[:3] == b"\xff\xd8\xff"
    # Unticking the box hides the column.
    r = client.get("/", query_string=[("q", caption), ("captions", "0")])
    assert "Caption match" not in r.get_data(as_text=True)


def test_json_api(synth_client, run):
    client, index = synth_client
    caption = next(iter(su.split_captions(run["data"]).values()))
    r = client.get("/api/search", query_string={"q": caption, "k": 3})
    assert r.status_code == 200 and r.mimetype == "application/json"
    data = r.get_json()
    assert [x["id"] for x in data["results"]] == [h.id for h in index.search(caption, k=3)]
    first = data["results"][0]
    assert {"path", "score", "moment", "thumb_url", "player_url", "media_url"} <= set(first)
    assert data["caption_matches"] and data["fingerprint"] == index.meta["fingerprint"]
    v = client.get(f"/api/video/{first['id']}").get_json()
    assert v["path"] == first["path"] and v["available"] and v["captions"]
    assert client.get("/api/search?q=").status_code == 400
    assert client.get("/api/search?q=x&k=0").status_code == 400
    assert client.get("/api/search?q=x&k=many").get_json()["error"].startswith("k must be")


def test_player_starts_at_the_moment_and_media_supports_range_requests(real_ro):
    client, ids, lib = real_ro["client"], real_ro["ids"], su.real_videos()
    vid = ids["arm_wrestling.mp4"]
    r = client.get(f"/video/{vid}?t=3.5&q=people")
    body = r.get_data(as_text=True)
    assert r.status_code == 200
    assert f'src="/media/{vid}#t=3.5"' in body and 'data-start="3.5"' in body
    assert "Best moments for" in body and "player.js" in body
    assert 'data-start="10.0"' in client.get(f"/video/{vid}?t=999").get_data(as_text=True)  # clamped
    assert 'data-start="0.0"' in client.get(f"/video/{vid}?t=nan").get_data(as_text=True)
    full = client.get(f"/media/{vid}")
    size = (lib / "arm_wrestling.mp4").stat().st_size
    assert full.status_code == 200 and full.mimetype == "video/mp4" and len(full.data) == size
    assert full.headers["Accept-Ranges"] == "bytes"
    part = client.get(f"/media/{vid}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and len(part.data) == 100
    assert part.headers["Content-Range"] == f"bytes 100-199/{size}"
    assert part.data == (lib / "arm_wrestling.mp4").read_bytes()[100:200]
    # The AVI plays through its WebM copy.
    avi = client.get(f"/media/{ids['eye_makeup.avi']}")
    assert avi.status_code == 200 and avi.mimetype == "video/webm" and avi.data[:4] == b"\x1a\x45\xdf\xa3"


def test_a_disappeared_video_breaks_only_itself(real):
    client, ids = real["client"], real["ids"]
    (real["lib"] / "pool_cleaning.mp4").unlink()
    (real["lib"] / "eye_makeup.avi").unlink()  # its WebM copy in the index is not played either
    r = client.get("/?q=someone")
    body = r.get_data(as_text=True)
    assert r.status_code == 200 and body.count("file missing") == 2
    for name in ("pool_cleaning.mp4", "eye_makeup.avi"):
        assert client.get(f"/media/{ids[name]}").status_code == 404
        page = client.get(f"/video/{ids[name]}")
        assert page.status_code == 404 and "no longer in the library" in page.get_data(as_text=True)
        assert client.get(f"/thumb/{ids[name]}").status_code == 200  # the thumbnail is in the index
    assert client.get(f"/media/{ids['arm_wrestling.mp4']}").status_code == 200
    api = client.get("/api/search?q=someone").get_json()["results"]
    assert {x["path"]: x["available"] for x in api} == {"arm_wrestling.mp4": True, "pool_cleaning.mp4": False,
                                                       "eye_makeup.avi": False}


def test_the_page_follows_a_reindex(real, run):
    client = real["client"]
    assert client.get("/api/search?q=x").get_json()["results"].__len__() == 3
    shutil.copy2(su.real_videos() / "arm_wrestling.mp4", real["lib"] / "copy.mp4")
    build_index(real["lib"], real["out"], su.encoder(run["checkpoint"]), progress=False)
    results = client.get("/api/search?q=x").get_json()["results"]
    assert len(results) == 4 and "copy.mp4" in {x["path"] for x in results}
    assert all(client.get(x["thumb_url"]).status_code == 200 for x in results)


TRAVERSALS = [
    "/media/../../../../etc/passwd", "/media/..%2f..%2f..%2fetc%2fpasswd", "/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/media/%252e%252e%252fetc%252fpasswd", "/media//etc/passwd", "/media/%2Fetc%2Fpasswd", "/media/-1",
    "/media/1/../../meta.sqlite", "/media/1%2f..%2f..%2fmeta.sqlite", "/media/99999", "/media/1.0",
    "/thumb/..%2fmeta.sqlite", "/thumb/%2e%2e%2f%2e%2e%2fCURRENT", "/thumb/0", "/video/..%2f..%2fetc%2fpasswd",
    "/static/../meta.sqlite", "/static/%2e%2e/web.py", "/static/..%2fweb.py", "/static//etc/passwd",
    "/static/%2e%2e%2f%2e%2e%2f%2e%2e%2fREADME.md", "/etc/passwd", "/api/video/..%2f1",
]


@pytest.mark.parametrize("url", TRAVERSALS)
def test_no_path_from_a_request_reaches_the_file_system(real_ro, url):
    r = real_ro["client"].get(url)
    assert r.status_code in (400, 404, 308), (url, r.status_code)
    if r.status_code == 308:  # werkzeug normalises '//' by redirecting; follow it
        r = real_ro["client"].get(url, follow_redirects=True)
        assert r.status_code == 404
    body = r.data
    assert b"root:" not in body and b"SQLite format" not in body and b"def create_app" not in body


def test_absolute_and_relative_paths_in_the_query_are_just_text(real_ro):
    for q in ("/etc/passwd", "../../meta.sqlite", "C:\\Windows\\win.ini"):
        r = real_ro["client"].get("/", query_string={"q": q})
        assert r.status_code == 200 and b"root:" not in r.data


def test_html_and_script_in_queries_are_escaped(real_ro, synth_client):
    evil = "<script>alert('x')</script><img src=x onerror=alert(1)> \"quoted\" & more"
    for client in (real_ro["client"], synth_client[0]):
        for url in ("/", f"/video/{next(iter(real_ro['ids'].values()))}"):
            r = client.get(url, query_string={"q": evil})
            body = r.get_data(as_text=True)
            assert r.status_code in (200, 404)
            assert "<script>alert" not in body and "<img src=x" not in body
            assert str(markupsafe.escape(evil)) in body
        api = client.get("/api/search", query_string={"q": evil})
        assert api.get_json()["query"] == evil and api.mimetype == "application/json"
    # Only our own scripts, styles and media may run or load, whatever slips through.
    headers = real_ro["client"].get("/").headers
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_fts5_syntax_in_queries_is_plain_text(synth_client):
    client, index = synth_client
    for q in ('"unbalanced', "a OR", "NEAR(red circle)", "caption:red", "*", "red AND NOT -blue", "^circle"):
        r = client.get("/", query_string={"q": q})
        assert r.status_code == 200, q
    assert index.caption_search("RED circle!!", k=3)[0].caption.lower().count("red") >= 1


def test_over_long_queries_are_refused(synth_client):
    client, _ = synth_client
    r = client.get("/", query_string={"q": "a" * (MAX_QUERY_CHARS + 1)})
    assert r.status_code == 400 and f"the limit is {MAX_QUERY_CHARS}" in r.get_data(as_text=True)
    assert client.get("/", query_string={"q": "a" * MAX_QUERY_CHARS}).status_code == 200
    assert client.get("/api/search", query_string={"q": "b" * 100_000}).status_code == 400
    assert client.get(f"/video/1?q={'c' * 1000}").status_code == 400
    assert client.get("/?q=x&k=1000").status_code == 400
    assert client.post("/").status_code == 405
