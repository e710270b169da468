"""Search web page (Flask test client): pages, JSON API, media with HTTP Range, missing files,
and the security rules (no path traversal, escaping, bounded queries)."""
import os
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
        assert f'src="/thumb/{h.id}?v={h.version}"' in body
        assert f'href="/video/{h.id}?t={h.start}&amp;end={h.end}&amp;q=' in body  # plays the best segment
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
    version = real_ro["index"].video(vid).version
    assert r.status_code == 200
    assert f'src="/media/{vid}?v={version}#t=3.5,10.0"' in body and 'data-start="3.5"' in body
    assert "Best moments for" in body and "player.js" in body
    seg = client.get(f"/video/{vid}?t=2.0&end=5.0").get_data(as_text=True)
    assert 'data-start="2.0" data-end="5.0"' in seg and "play the segment" in seg
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
    # The AVI plays through its H.264 MP4 copy.
    avi = client.get(f"/media/{ids['eye_makeup.avi']}")
    assert avi.status_code == 200 and avi.mimetype == "video/mp4" and avi.data[4:8] == b"ftyp"


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


HUGE_IDS = [2 ** 63, 2 ** 63 + 1, 2 ** 64, 10 ** 30]


@pytest.mark.parametrize("route", ["media", "thumb", "video", "api/video"])
def test_huge_and_unknown_ids_are_404(real_ro, route):
    client = real_ro["client"]
    for vid in [*HUGE_IDS, 2 ** 63 - 1, 0, 99999]:
        r = client.get(f"/{route}/{vid}")
        assert r.status_code == 404, (route, vid, r.status_code)
        if route.startswith("api"):
            assert r.mimetype == "application/json" and r.get_json()["error"] == "not found"
    assert real_ro["index"].video(2 ** 70) is None and real_ro["index"].media_path(-(2 ** 70)) is None


def test_api_errors_are_json(real_ro, monkeypatch):
    client = real_ro["client"]
    for r, status in ((client.get("/api/nothing-here"), 404), (client.post("/api/search?q=x"), 405),
                      (client.get("/api/search?q="), 400), (client.get("/api/search?q=x&k=0"), 400)):
        assert r.status_code == status and r.mimetype == "application/json", (r.status_code, r.data[:80])
        assert r.get_json()["status"] == status and r.get_json()["error"]
    # A bug answers 500, still JSON on /api (and an HTML page elsewhere).
    def broken(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(real_ro["index"], "search_full", broken)
    r = client.get("/api/search?q=x")
    assert r.status_code == 500 and r.get_json() == {"error": "internal error", "status": 500}
    page = client.get("/?q=x")
    assert page.status_code == 500 and page.mimetype == "text/html" and "boom" not in page.get_data(as_text=True)


def test_a_malformed_range_header_is_ignored(real_ro):
    """RFC 9110: a Range the server cannot use is ignored (200, the whole file); only a valid
    byte range outside the file is 416."""
    client, vid = real_ro["client"], real_ro["ids"]["arm_wrestling.mp4"]
    size = (su.real_videos() / "arm_wrestling.mp4").stat().st_size
    for header in ("bytes=abc", "bytes=5-1", "bytes", "bytes=-", "items=0-5", "bytes=0-1,5-6", "0-100", "bytes=1-2-3"):
        r = client.get(f"/media/{vid}", headers={"Range": header})
        assert r.status_code == 200 and len(r.data) == size, (header, r.status_code)
    assert client.get(f"/media/{vid}", headers={"Range": f"bytes={size + 10}-"}).status_code == 416
    assert client.get(f"/media/{vid}", headers={"Range": "bytes=-100"}).status_code == 206


def test_a_cut_query_says_how_much_was_used(synth_client):
    client, index = synth_client
    budget = index.encoder.max_words - 2
    long_query = " ".join(["a red circle moves left on a blue background"] * 6)  # 54 words
    data = client.get("/api/search", query_string={"q": long_query, "k": 3}).get_json()
    used = data["query_used"]
    assert used["truncated"] and used["tokens"] == used["max_tokens"] == budget
    assert long_query.startswith(used["used_text"]) and len(used["used_text"].split()) == budget
    short = client.get("/api/search", query_string={"q": "a red circle", "k": 3}).get_json()["query_used"]
    assert short == {"tokens": 3, "max_tokens": budget, "truncated": False, "used_text": None}
    page = client.get("/", query_string={"q": long_query}).get_data(as_text=True)
    assert 'id="query-cut"' in page and f"only the first {budget} were used" in page
    assert 'id="query-cut"' not in client.get("/", query_string={"q": "a red circle"}).get_data(as_text=True)
    player = client.get(f"/video/{data['results'][0]['id']}", query_string={"q": long_query})
    assert 'id="query-cut"' in player.get_data(as_text=True)


def test_ids_are_never_reused_and_media_urls_follow_the_content(tmp_path, run):
    clips = sorted((run["data"] / "videos").glob("*.mp4"))
    lib = tmp_path / "lib"
    lib.mkdir()
    for name, clip in zip(("a.mp4", "b.mp4", "c.mp4"), clips):
        shutil.copy2(clip, lib / name)
    out, enc = tmp_path / "index", su.encoder(run["checkpoint"])
    build_index(lib, out, enc, progress=False)
    client = create_app(SearchIndex.open(out, encoder=enc)).test_client()

    def by_path():
        return {x["path"]: x for x in client.get("/api/search?q=a+red+circle&k=10").get_json()["results"]}
    first = by_path()
    assert [first[n]["id"] for n in ("a.mp4", "b.mp4", "c.mp4")] == [1, 2, 3]
    (lib / "c.mp4").unlink()                               # the highest id goes
    build_index(lib, out, enc, progress=False)
    shutil.copy2(clips[3], lib / "d.mp4")                  # and another video comes
    shutil.copy2(clips[4], lib / "a.mp4")                  # a's content changes
    os.utime(lib / "a.mp4", ns=(1, 1))
    build_index(lib, out, enc, progress=False)
    now = by_path()
    assert now["d.mp4"]["id"] == 4                         # never 3: /video/3 was another video
    assert client.get("/video/3").status_code == 404 and client.get("/api/video/3").status_code == 404
    assert now["a.mp4"]["id"] == 1 and now["b.mp4"]["id"] == 2    # the same files keep their ids
    assert now["a.mp4"]["media_url"] != first["a.mp4"]["media_url"]  # new content, new URLs
    assert now["a.mp4"]["thumb_url"] != first["a.mp4"]["thumb_url"]
    assert now["b.mp4"]["media_url"] == first["b.mp4"]["media_url"]  # unchanged: cached copies stay valid
    fresh = client.get(now["b.mp4"]["media_url"])
    assert fresh.status_code == 200 and "max-age=86400" in fresh.headers["Cache-Control"]
    stale = client.get(first["a.mp4"]["media_url"])          # an old URL is never cached as the new file
    assert "max-age=0" in stale.headers["Cache-Control"]


def test_index_size_is_in_the_api_and_the_page(real_ro):
    info = real_ro["client"].get("/api/info").get_json()
    assert info["videos"] == 3 and 0 < info["index_bytes"] < info["library_bytes"]
    assert set(info["sizes"]) >= {"embeddings", "thumbnails", "playback_copies", "metadata"}
    assert "for a library of" in real_ro["client"].get("/").get_data(as_text=True)


def _run_until_closed(server) -> None:
    """waitress's loop, ended by ``server.close()`` from the test thread (its select() then sees
    the closed socket: EBADF is how this loop learns it is over, not a failure)."""
    try:
        server.run()
    except OSError:
        pass


def test_served_by_waitress(real_ro):
    import json
    import threading
    import urllib.request
    from clip4clip.search.web import make_server
    server = make_server(real_ro["index"], "127.0.0.1", 0, threads=2)
    thread = threading.Thread(target=_run_until_closed, args=(server,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.effective_port}"
        with urllib.request.urlopen(url + "/api/search?q=people&k=2", timeout=30) as r:
            assert r.status == 200 and len(json.load(r)["results"]) == 2
            assert r.headers["Server"] == "clip4clip-search"
        try:
            urllib.request.urlopen(url + f"/api/video/{2 ** 64}", timeout=30)
        except urllib.error.HTTPError as e:
            assert e.code == 404 and json.load(e)["error"] == "not found"
    finally:
        server.close()
        thread.join(timeout=10)


def test_thumb_treats_a_malformed_range_as_media_does(real_ro):
    """RFC 9110: /thumb, like /media, ignores a Range it cannot use (200, the whole thumbnail);
    only a well-formed range outside the file is 416."""
    client, vid = real_ro["client"], real_ro["ids"]["arm_wrestling.mp4"]
    whole = client.get(f"/thumb/{vid}")
    assert whole.status_code == 200 and whole.mimetype == "image/jpeg"
    size = len(whole.data)
    for header in ("bytes=abc", "bytes=5-1", "bytes", "bytes=-", "items=0-5", "bytes=0-1,5-6", "0-100", "bytes=1-2-3"):
        for route in ("thumb", "media"):
            r = client.get(f"/{route}/{vid}", headers={"Range": header})
            assert r.status_code == 200, (route, header, r.status_code)
        assert client.get(f"/thumb/{vid}", headers={"Range": header}).data == whole.data
    assert client.get(f"/thumb/{vid}", headers={"Range": f"bytes={size + 10}-"}).status_code == 416
    part = client.get(f"/thumb/{vid}", headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.data == whole.data[:10]


def test_over_long_requests_are_431_json_on_the_api_through_waitress(real_ro):
    """A query pasted into a URL past 256 KB got waitress's own plain-text 431; the app now
    answers it below waitress's (raised) limit: JSON on /api, an HTML page elsewhere."""
    import http.client
    import json
    import threading
    from clip4clip.search.web import MAX_HEADER_BYTES, make_server
    server = make_server(real_ro["index"], "127.0.0.1", 0, threads=2)
    thread = threading.Thread(target=_run_until_closed, args=(server,), daemon=True)
    thread.start()

    def get(path: str):
        conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=30)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.getheader("Content-Type"), r.read()
        finally:
            conn.close()
    try:
        long_q = "a" * (300 << 10)
        status, kind, body = get(f"/api/search?q={long_q}")
        assert (status, kind) == (431, "application/json"), (status, kind, body[:200])
        payload = json.loads(body)
        assert payload["status"] == 431 and payload["error"].startswith("the request's URL and headers are ")
        assert payload["error"].endswith(f"bytes; the limit is {MAX_HEADER_BYTES}")
        status, kind, body = get(f"/?q={long_q}")
        assert status == 431 and kind.startswith("text/html") and b"Request too large" in body
        assert get("/api/search?q=people&k=2")[0] == 200
        assert get(f"/api/search?q={'b' * 2000}")[0] == 400  # under the bound: the query's own limit, as before
    finally:
        server.close()
        thread.join(timeout=10)
