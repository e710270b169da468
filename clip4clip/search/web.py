"""The search web page (Flask, server-rendered; a few lines of JavaScript for the player).

Routes: ``/`` search page (``q``, ``k``, ``captions``), ``/video/<id>`` player starting at
``t`` seconds, ``/media/<id>`` the video file (HTTP Range, so the browser can seek),
``/thumb/<id>`` thumbnail, ``/api/search`` and ``/api/video/<id>`` JSON.

Safety: files are looked up by the integer id of an indexed video, never by a path from the
request, and only inside the library or the index (``SearchIndex.media_path``); every echoed
value goes through Jinja's autoescaping; queries are bounded (``MAX_QUERY_CHARS``); a strict
Content-Security-Policy allows only this server's own scripts, styles and media.
"""
from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Optional

from flask import Flask, abort, jsonify, render_template, request, send_file, url_for

from .query import MAX_QUERY_CHARS, SearchIndex, check_query

DEFAULT_K = 12
MAX_K = 100
#: MIME types of what /media serves. MOV holds H.264 the same way MP4 does (both ISO media
#: files), and browsers only play it when it is announced as MP4.
_MIME = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/mp4", ".webm": "video/webm"}
_CSP = ("default-src 'none'; img-src 'self'; media-src 'self'; style-src 'self'; script-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


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


def _time_arg(duration: float) -> float:
    try:
        t = float(request.args.get("t", "0"))
    except ValueError:
        return 0.0
    return min(max(t, 0.0), max(duration, 0.0)) if math.isfinite(t) else 0.0


def mmss(seconds: float) -> str:
    """1:05.3 style time for the page."""
    seconds = max(float(seconds), 0.0)
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def create_app(index: SearchIndex) -> Flask:
    """A Flask app serving ``index``. Run it with ``app.run`` or any WSGI server."""
    here = Path(__file__).parent
    app = Flask(__name__, template_folder=str(here / "templates"), static_folder=str(here / "static"))
    app.jinja_env.filters["mmss"] = mmss
    live = _Live(index)

    @app.after_request
    def _headers(resp):
        resp.headers.setdefault("Content-Security-Policy", _CSP)
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["X-Frame-Options"] = "DENY"
        return resp

    def error_page(status: int, title: str, message: str):
        return render_template("error.html", status=status, title=title, message=message,
                               index=live.get()), status

    @app.errorhandler(BadRequest)
    def _bad(e):
        if request.path.startswith("/api/"):
            return jsonify({"error": str(e)}), 400
        return error_page(400, "Cannot search for that", str(e))

    @app.errorhandler(404)
    def _not_found(e):
        if request.path.startswith("/api/"):
            return jsonify({"error": "not found"}), 404
        return error_page(404, "Not found", "There is no such page or video in this index.")

    @app.errorhandler(405)
    def _method(e):
        return error_page(405, "Method not allowed", "This page only answers GET requests.")

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
                                   hits=None, caption_hits=None, examples=idx.example_captions(3))
        try:
            hits = idx.search(check_query(q), k)
            caption_hits = idx.caption_search(q, k) if show_captions else None
        except ValueError as e:
            raise BadRequest(str(e)) from e
        return render_template("search.html", index=idx, q=q, k=k, show_captions=show_captions, hits=hits,
                               caption_hits=caption_hits, examples=[])

    @app.get("/video/<int:vid>")
    def player(vid: int):
        idx = live.get()
        rec = idx.video(vid)
        if rec is None:
            abort(404)
        t = _time_arg(rec.duration)
        q = _query_arg()
        moments = []
        if q:
            scores = idx.frame_scores(vid, q)
            moments = sorted(scores, key=lambda m: -m["score"])[:5]
        available = idx.media_path(vid) is not None
        return render_template("player.html", index=idx, video=rec, t=t, q=q, moments=moments,
                               available=available), (200 if available else 404)

    @app.get("/media/<int:vid>")
    def media(vid: int):
        path = live.get().media_path(vid)
        if path is None:
            abort(404)
        # conditional=True: Range requests get 206 partial content, so the player can seek.
        return send_file(path, mimetype=_MIME.get(path.suffix.lower(), "application/octet-stream"),
                         conditional=True, max_age=300)

    @app.get("/thumb/<int:vid>")
    def thumb(vid: int):
        idx = live.get()
        if idx.video(vid) is None:
            abort(404)
        path = idx.thumb_path(vid)
        if path is None:
            return send_file(Path(app.static_folder) / "placeholder.svg", mimetype="image/svg+xml")
        return send_file(path, mimetype="image/jpeg", conditional=True, max_age=300)

    @app.get("/api/search")
    def api_search():
        idx = live.get()
        q, k = _query_arg(), _k(request.args.get("k"))
        try:
            hits = idx.search(check_query(q), k)
            caption_hits = idx.caption_search(q, k) if idx.has_captions else None
        except ValueError as e:
            raise BadRequest(str(e)) from e
        results = [{**h.to_dict(), "thumb_url": url_for("thumb", vid=h.id),
                    "player_url": url_for("player", vid=h.id, t=h.moment, q=q),
                    "media_url": url_for("media", vid=h.id) if h.available else None} for h in hits]
        captions = None if caption_hits is None else [
            {**c.to_dict(), "player_url": url_for("player", vid=c.id)} for c in caption_hits]
        return jsonify({"query": q, "k": k, "backend": idx.backend, "fingerprint": idx.meta["fingerprint"],
                        "results": results, "caption_matches": captions})

    @app.get("/api/video/<int:vid>")
    def api_video(vid: int):
        idx = live.get()
        rec = idx.video(vid)
        if rec is None:
            abort(404)
        return jsonify({**rec.__dict__, "available": idx.media_path(vid) is not None,
                        "media_url": url_for("media", vid=vid), "thumb_url": url_for("thumb", vid=vid)})

    return app
