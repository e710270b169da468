"""The search web page (Flask, server-rendered; a few lines of JavaScript for the player).

Routes: ``/`` search page (``q``, ``k``, ``captions``), ``/video/<id>`` player playing the span
``t`` .. ``end`` seconds (the hit's best segment), ``/media/<id>`` the video file (HTTP Range, so
the browser can seek), ``/thumb/<id>`` thumbnail, ``/api/search``, ``/api/video/<id>`` and
``/api/info`` JSON. Every ``/api`` answer is JSON, errors included.

Serve it with ``serve`` (waitress, a production WSGI server: a pool of ``threads`` workers) or
any WSGI server; ``python -m clip4clip.search serve`` does.

Safety: files are looked up by the integer id of an indexed video, never by a path from the
request, and only inside the library or the index (``SearchIndex.media_path``); every echoed
value goes through Jinja's autoescaping; queries are bounded (``MAX_QUERY_CHARS``), and so are a
request's URL and headers (``MAX_HEADER_BYTES``: 431, JSON under /api; waitress's own plain-text
431 only above ``WAITRESS_MAX_HEADER_BYTES``); a malformed Range is ignored by /media and /thumb
alike (RFC 9110), only an unsatisfiable one is 416; a strict
Content-Security-Policy allows only this server's own scripts, styles and media. Media and
thumbnail URLs carry ``v=<content version>``: a video whose file changed gets new URLs, so a
browser never shows its cached copy of the old one.
"""
from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Optional

from flask import Flask, abort, jsonify, render_template, request, send_file, url_for
from werkzeug.exceptions import HTTPException, RequestHeaderFieldsTooLarge
from werkzeug.http import parse_range_header

from .indexer import human_bytes
from .query import MAX_ID, MAX_QUERY_CHARS, SearchIndex, check_query

DEFAULT_K = 12
MAX_K = 100
#: Worker threads of ``serve`` (waitress): each runs one request; a query is one text encoding
#: (tens of ms of CPU) plus a scan, so more threads than cores only queue on the CPU.
DEFAULT_THREADS = 4
#: MIME types of what /media serves. MOV holds H.264 the same way MP4 does (both ISO media
#: files), and browsers only play it when it is announced as MP4.
_MIME = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/mp4", ".webm": "video/webm"}
_CSP = ("default-src 'none'; img-src 'self'; media-src 'self'; style-src 'self'; script-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
#: Video ids in URLs: SQLite integers (a larger number is no video: 404, not an overflow).
ID = f"int(max={MAX_ID})"
#: Request line and headers the app answers (above: 431, JSON under /api like every API answer).
MAX_HEADER_BYTES = 256 << 10
#: What waitress itself reads of a request's headers: above it, waitress answers its own plain
#: text 431 (it has dropped the request line by then, so it cannot know the path was /api).
#: Four times the app's bound, so that requests between the two get the app's answer (a header
#: buffer is held per connection while it is read: at most 256 connections x 1 MiB).
WAITRESS_MAX_HEADER_BYTES = 4 * MAX_HEADER_BYTES


class _Live:
    """The index the app serves, switched to a newer version when a re-index publishes one."""

    def __init__(self, index: SearchIndex):
        self._index, self._lock = index, threading.Lock()

    def get(self) -> SearchIndex:
        with self._lock:
            fresh = self._index.refresh()
            if fresh is not self._index:
                self._index = fresh  # the old one's files may be deleted; drop it
            return self._index


class BadRequest(ValueError):
    """A request parameter a person can fix; answered with status 400."""


def _k(value: Optional[str]) -> int:
    if value in (None, ""):
        return DEFAULT_K
    try:
        k = int(value)
    except ValueError:
        raise BadRequest(f"k must be a whole number from 1 to {MAX_K}") from None
    if not 1 <= k <= MAX_K:
        raise BadRequest(f"k must be a whole number from 1 to {MAX_K}")
    return k


def _query_arg() -> str:
    """The ``q`` parameter, bounded before anything else looks at it."""
    q = request.args.get("q", "")
    # The raw bound stops megabytes of padding before any work is done on them.
    if len(q.strip()) > MAX_QUERY_CHARS or len(q) > 4 * MAX_QUERY_CHARS:
        raise BadRequest(f"the query is {len(q.strip())} characters long; the limit is {MAX_QUERY_CHARS}")
    return q.strip()


def _time_arg(name: str, duration: float, default: float) -> float:
    try:
        t = float(request.args.get(name, default))
    except ValueError:
        return default
    return min(max(t, 0.0), max(duration, 0.0)) if math.isfinite(t) else default


def mmss(seconds: float) -> str:
    """1:05.3 style time for the page."""
    seconds = max(float(seconds), 0.0)
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def _ignore_bad_range() -> None:
    """RFC 9110 14.2: a server MAY ignore Range; a Range it cannot parse, or one in another
    unit, or several ranges (which we do not serve as multipart), is ignored and the whole file
    sent with 200. Only a well-formed single byte range outside the file gets 416."""
    header = request.environ.get("HTTP_RANGE")
    if header is None:
        return
    rng = parse_range_header(header)
    if rng is None or rng.units != "bytes" or len(rng.ranges) != 1:
        del request.environ["HTTP_RANGE"]


def _header_bytes(environ: dict) -> int:
    """About the bytes of the request line and headers (the URL's path and query included)."""
    return (len(environ.get("PATH_INFO", "")) + len(environ.get("QUERY_STRING", ""))
            + sum(len(k) + len(str(v)) for k, v in environ.items() if k.startswith("HTTP_")))


def _media_url(vid: int, version: str) -> str:
    """URL of a video's file; ``v`` makes a changed file a new URL (no stale browser cache)."""
    return url_for("media", vid=vid, v=version)


def _thumb_url(vid: int, version: str) -> str:
    """URL of a video's thumbnail, versioned like ``_media_url``."""
    return url_for("thumb", vid=vid, v=version)


def _is_api() -> bool:
    """Whether this request is for the JSON API (whose errors are JSON too) or for a page."""
    return request.path.startswith("/api/") or request.path == "/api"


def _search(idx: SearchIndex, q: str, k: int, captions: bool):
    """Run query ``q`` (and, if ``captions``, the caption search); a query the index rejects
    is the person's to fix, so its ValueError becomes a 400."""
    try:
        result = idx.search_full(check_query(q), k)
        caption_hits = idx.caption_search(q, k) if captions else None
    except ValueError as e:
        raise BadRequest(str(e)) from e
    return result, caption_hits


def _new_flask() -> Flask:
    """The bare Flask app: this package's templates and static files, and the page's filters
    and URL helpers."""
    here = Path(__file__).parent
    app = Flask(__name__, template_folder=str(here / "templates"), static_folder=str(here / "static"))
    app.jinja_env.filters["mmss"] = mmss
    app.jinja_env.filters["bytes"] = human_bytes
    app.jinja_env.globals.update(media_url=_media_url, thumb_url=_thumb_url)
    return app


def _add_request_bound(app: Flask) -> None:
    """Requests with headers over ``MAX_HEADER_BYTES`` (a query pasted into the URL, say) get a
    431 from the app, so that /api answers it as JSON; waitress's own limit is above this one."""
    @app.before_request
    def _bounded():
        size = _header_bytes(request.environ)
        if size > MAX_HEADER_BYTES:
            raise RequestHeaderFieldsTooLarge(f"the request's URL and headers are {size} bytes; the limit is "
                                              f"{MAX_HEADER_BYTES}")


def _add_security_headers(app: Flask) -> None:
    """Every answer carries the CSP and the headers that stop sniffing, referrers and framing."""
    @app.after_request
    def _headers(resp):
        resp.headers.setdefault("Content-Security-Policy", _CSP)
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["X-Frame-Options"] = "DENY"
        return resp


def _add_error_handlers(app: Flask, live: _Live) -> None:
    """Errors answer as JSON under /api and as an error page elsewhere (a crash is logged)."""
    def error_page(status: int, title: str, message: str):
        return render_template("error.html", status=status, title=title, message=message,
                               index=live.get()), status

    @app.errorhandler(BadRequest)
    def _bad(e):
        if _is_api():
            return jsonify({"error": str(e), "status": 400}), 400
        return error_page(400, "Cannot search for that", str(e))

    @app.errorhandler(HTTPException)
    def _http(e):
        status = e.code or 500
        if _is_api():
            return jsonify({"error": e.description if status != 404 else "not found", "status": status}), status
        if status == 404:
            return error_page(404, "Not found", "There is no such page or video in this index.")
        if status == 405:
            return error_page(405, "Method not allowed", "This page only answers GET requests.")
        if status == 431:
            return error_page(431, "Request too large", e.description)
        return e  # werkzeug's own page (e.g. 416 with its Content-Range header)

    @app.errorhandler(Exception)
    def _crash(e):
        app.logger.exception("error serving %s", request.path)
        if _is_api():
            return jsonify({"error": "internal error", "status": 500}), 500
        return error_page(500, "Something went wrong", "The server could not answer this request.")


def _player_moments(idx: SearchIndex, vid: int, q: str):
    """The five best moments of video ``vid`` for query ``q`` and the query text used
    (none without a query)."""
    if not q:
        return [], None
    try:
        emb, used = idx.encode_query_used(q)
    except ValueError as e:
        raise BadRequest(str(e)) from e
    scores = idx.frame_scores_embedding(vid, emb)
    return sorted(scores, key=lambda m: -m["score"])[:5], used


def _add_page_routes(app: Flask, live: _Live) -> None:
    """The HTML pages: ``/`` (search) and ``/video/<id>`` (player)."""
    @app.get("/")
    def search_page():
        idx = live.get()
        q, k = _query_arg(), _k(request.args.get("k"))
        # The form sends captions=0 (hidden) and captions=1 (checkbox) when ticked; a bare URL
        # without the parameter shows the column.
        chosen = request.args.getlist("captions")
        show_captions = idx.has_captions and (not chosen or "1" in chosen)
        if not q:
            return render_template("search.html", index=idx, q="", k=k, show_captions=show_captions,
                                   hits=None, caption_hits=None, examples=idx.example_captions(3), used=None)
        result, caption_hits = _search(idx, q, k, show_captions)
        return render_template("search.html", index=idx, q=q, k=k, show_captions=show_captions, hits=result.hits,
                               caption_hits=caption_hits, examples=[], used=result.text)

    @app.get(f"/video/<{ID}:vid>")
    def player(vid: int):
        idx = live.get()
        rec = idx.video(vid)
        if rec is None:
            abort(404)
        q = _query_arg()
        moments, used = _player_moments(idx, vid, q)
        t = _time_arg("t", rec.duration, 0.0)
        end = _time_arg("end", rec.duration, rec.duration)
        if end <= t:
            end = rec.duration
        available = idx.media_path(vid) is not None
        return render_template("player.html", index=idx, video=rec, t=t, end=end, q=q, moments=moments,
                               used=used, available=available), (200 if available else 404)


def _add_file_routes(app: Flask, live: _Live) -> None:
    """The files: ``/media/<id>`` (the video, seekable) and ``/thumb/<id>`` (its thumbnail)."""
    @app.get(f"/media/<{ID}:vid>")
    def media(vid: int):
        idx = live.get()
        path = idx.media_path(vid)
        if path is None:
            abort(404)
        _ignore_bad_range()
        rec = idx.video(vid)
        # A URL with the current content version never changes meaning: cache it for a day.
        fresh = rec is not None and request.args.get("v") == rec.version
        # conditional=True: Range requests get 206 partial content, so the player can seek.
        return send_file(path, mimetype=_MIME.get(path.suffix.lower(), "application/octet-stream"),
                         conditional=True, max_age=86400 if fresh else 0)

    @app.get(f"/thumb/<{ID}:vid>")
    def thumb(vid: int):
        idx = live.get()
        rec = idx.video(vid)
        if rec is None:
            abort(404)
        _ignore_bad_range()  # as /media: a malformed Range is ignored, only an unsatisfiable one is 416
        path = idx.thumb_path(vid)
        if path is None:
            return send_file(Path(app.static_folder) / "placeholder.svg", mimetype="image/svg+xml")
        fresh = request.args.get("v") == rec.version
        return send_file(path, mimetype="image/jpeg", conditional=True, max_age=86400 if fresh else 0)


def _add_api_routes(app: Flask, live: _Live) -> None:
    """The JSON API: ``/api/search``, ``/api/video/<id>`` and ``/api/info``."""
    @app.get("/api/search")
    def api_search():
        idx = live.get()
        q, k = _query_arg(), _k(request.args.get("k"))
        result, caption_hits = _search(idx, q, k, idx.has_captions)
        results = [{**h.to_dict(), "thumb_url": _thumb_url(h.id, h.version),
                    "player_url": url_for("player", vid=h.id, t=h.start, end=h.end, q=q),
                    "media_url": _media_url(h.id, h.version) if h.available else None} for h in result.hits]
        captions = None if caption_hits is None else [
            {**c.to_dict(), "player_url": url_for("player", vid=c.id)} for c in caption_hits]
        return jsonify({"query": q, "k": k, "backend": idx.backend, "fingerprint": idx.meta["fingerprint"],
                        "query_used": result.text.to_dict(), "results": results, "caption_matches": captions})

    @app.get(f"/api/video/<{ID}:vid>")
    def api_video(vid: int):
        idx = live.get()
        rec = idx.video(vid)
        if rec is None:
            abort(404)
        return jsonify({**rec.__dict__, "available": idx.media_path(vid) is not None,
                        "media_url": _media_url(vid, rec.version), "thumb_url": _thumb_url(vid, rec.version)})

    @app.get("/api/info")
    def api_info():
        return jsonify(live.get().info())


def create_app(index: SearchIndex) -> Flask:
    """A Flask app serving ``index``. Run it with ``serve`` or any WSGI server."""
    app = _new_flask()
    live = _Live(index)
    _add_request_bound(app)
    _add_security_headers(app)
    _add_error_handlers(app, live)
    _add_page_routes(app, live)
    _add_file_routes(app, live)
    _add_api_routes(app, live)
    return app


def make_server(index: SearchIndex, host: str = "127.0.0.1", port: int = 8000, threads: int = DEFAULT_THREADS):
    """A waitress server for ``index`` (not started): ``.run()`` serves until ``.close()``;
    ``.effective_port`` is the port (pass 0 for a free one)."""
    from waitress import create_server
    # connection_limit: keep-alive clients beyond the worker threads wait in the OS backlog
    # instead of being refused; channel_timeout closes idle keep-alive connections.
    return create_server(create_app(index), host=host, port=port, threads=int(threads), ident="clip4clip-search",
                         connection_limit=256, channel_timeout=60, max_request_header_size=WAITRESS_MAX_HEADER_BYTES)


def serve(index: SearchIndex, host: str = "127.0.0.1", port: int = 8000, threads: int = DEFAULT_THREADS) -> None:
    """Serve ``index`` with waitress until interrupted."""
    make_server(index, host, port, threads).run()
