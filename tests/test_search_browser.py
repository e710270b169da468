"""The search page in a real headless Chromium (Debian's package, driven by Playwright): type
a query, see the thumbnails and best segments, click one, and find the player playing that
segment (starts at it, stops at its end, drawn on the timeline); the "Best moments" list does
not overlap; the real clips (H.264 MP4 and an AVI played through its H.264 copy) load and seek.

Chromium is required: without it these tests FAIL, naming how to install it (.ci/run does).
Set CLIP4CLIP_UPDATE_SCREENSHOT=1 to rewrite docs/search_results.png from this run.
"""
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

import search_utils as su
from clip4clip.search import SearchIndex
from clip4clip.search.web import create_app, mmss

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"]
SCREENSHOT = su.REPO / "docs" / "search_results.png"


def chromium_path() -> str:
    for candidate in (os.environ.get("CLIP4CLIP_CHROMIUM"), shutil.which("chromium"),
                      shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("Chromium not found: the browser test needs Debian's chromium package "
                "(apt-get install -y chromium; .ci/run installs it) or CLIP4CLIP_CHROMIUM=/path/to/chrome",
                pytrace=False)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package playwright is missing: pip install -e '.[dev]'", pytrace=False)
    executable = chromium_path()
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        # A fresh profile; the flags keep Chromium off the network it cannot reach here.
        context = p.chromium.launch_persistent_context(profile, executable_path=executable, headless=True,
                                                       args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 860})
        yield context
        context.close()


def serve(index: SearchIndex):
    """Run the app on a free port in a thread; returns (base url, server)."""
    from werkzeug.serving import make_server
    server = make_server("127.0.0.1", 0, create_app(index), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server


@pytest.fixture(scope="module")
def synth_server(tmp_path_factory):
    base = su.base_dir(tmp_path_factory)
    run = su.trained_run(base)
    lib = su.synthetic_library(base, run["data"])
    url, server = serve(SearchIndex.open(su.built_index("synthetic_index", lib, run["checkpoint"], base)))
    yield url, run
    server.shutdown()


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    base = su.base_dir(tmp_path_factory)
    run = su.trained_run(base)
    index = SearchIndex.open(su.built_index("real_index", su.real_videos(), run["checkpoint"], base))
    url, server = serve(index)
    yield url, index
    server.shutdown()


def wait_for_metadata(page, timeout_ms: int = 15000) -> dict:
    page.wait_for_function("() => { const v = document.getElementById('player');"
                           " return v && (v.readyState >= 1 || v.error); }", timeout=timeout_ms)
    return page.evaluate("() => { const v = document.getElementById('player'); return {ready: v.readyState,"
                         " time: v.currentTime, duration: v.duration, error: v.error && v.error.code}; }")


def test_type_a_query_see_thumbnails_click_and_play_at_the_moment(browser, synth_server, tmp_path):
    url, run = synth_server
    caption = next(iter(su.split_captions(run["data"]).values()))
    page = browser.new_page()
    page.goto(url + "/")
    assert "Search 24 videos" in page.inner_text("main")
    page.fill("#q", caption)
    page.press("#q", "Enter")
    page.wait_for_selector("#results .card img")
    page.wait_for_function("() => [...document.querySelectorAll('#results img')].every(i => i.complete)")
    widths = page.eval_on_selector_all("#results img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) == 12 and all(w > 0 for w in widths), widths
    assert page.locator(".captions li").count() > 0  # the caption-match column
    shot = tmp_path / "search_results.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("CLIP4CLIP_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)

    # Each card shows its best segment, which contains its best moment.
    first = page.locator("#results .card").first
    moment = float(first.get_attribute("data-moment"))
    start, end = float(first.get_attribute("data-start")), float(first.get_attribute("data-end"))
    assert start <= moment < end
    assert first.locator(".moment").inner_text() == f"\u25b6 {mmss(start)}\u2013{mmss(end)}"
    first.locator("a").click()
    page.wait_for_url("**/video/**")
    state = wait_for_metadata(page)
    assert state["error"] is None and state["ready"] >= 1
    assert state["duration"] == pytest.approx(8.0, abs=0.3)
    # The player starts at the segment, draws it on the timeline, and stops at its end.
    assert state["time"] == pytest.approx(start, abs=0.05)
    bar, timeline = page.locator("#segment").bounding_box(), page.locator("#timeline").bounding_box()
    assert bar["width"] == pytest.approx(timeline["width"] * max(0.005, (end - start) / state["duration"]), abs=2)
    assert bar["x"] - timeline["x"] == pytest.approx(timeline["width"] * start / state["duration"], abs=2)
    page.evaluate("() => { const v = document.getElementById('player'); v.playbackRate = 2; v.play(); }")
    page.wait_for_function("() => document.getElementById('player').paused && "
                           "document.getElementById('player').currentTime > 0", timeout=20000)
    stopped = page.evaluate("() => document.getElementById('player').currentTime")
    assert end - 0.3 <= stopped <= end + 0.6, (start, end, stopped)
    # The "Best moments" list: numbers, times and scores side by side, nothing overlapping.
    boxes = page.eval_on_selector_all(
        ".moments li > *", "els => els.map(e => { const r = e.getBoundingClientRect();"
        " return {x: r.left, y: r.top, w: r.width, h: r.height, text: e.textContent.trim()}; })")
    assert len(boxes) == 3 * page.locator(".moments li").count() >= 6
    assert [b["text"] for b in boxes[:3]][0] == "1." and all(b["w"] > 0 and b["h"] > 0 for b in boxes)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            overlap_x = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
            overlap_y = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
            assert overlap_x <= 0.5 or overlap_y <= 0.5, (a, b)
    # A moment button seeks too.
    button = page.locator("[data-seek]").last
    target = float(button.get_attribute("data-seek"))
    button.click()
    page.wait_for_function(f"() => Math.abs(document.getElementById('player').currentTime - {target}) < 0.3")
    page.close()


@pytest.mark.parametrize("name,duration", [("arm_wrestling.mp4", 10.0), ("eye_makeup.avi", 6.56),
                                           ("pool_cleaning.mp4", 10.0)])
def test_real_clips_show_up_and_play(browser, real_server, name, duration):
    url, index = real_server
    page = browser.new_page()
    page.goto(url + "/?q=someone+doing+something")
    card = page.locator(f"#results .card:has(.path:text-is('{name}'))")
    assert card.count() == 1
    assert card.locator("img").evaluate("i => i.complete && i.naturalWidth") > 0
    start = float(card.get_attribute("data-start"))
    card.locator("a").click()
    state = wait_for_metadata(page)
    assert state["error"] is None, f"{name}: media error {state['error']}"
    assert state["duration"] == pytest.approx(duration, abs=0.15)
    assert state["time"] == pytest.approx(start, abs=0.05)
    # It really plays: decoded frames advance the clock.
    page.evaluate("() => document.getElementById('player').play()")
    page.wait_for_function(f"() => document.getElementById('player').currentTime > {start} + 0.2",
                           timeout=15000)
    page.close()
