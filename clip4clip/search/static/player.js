// Play the hit's best segment: start at data-start and pause at data-end. The #t=start,end
// media fragment in the src asks for the same; the script covers browsers that ignore
// fragments, replays the segment on request, and draws it on the timeline bar.
document.addEventListener("DOMContentLoaded", function () {
  var video = document.getElementById("player");
  if (!video) return;
  var start = parseFloat(video.dataset.start || "0") || 0;
  var duration = parseFloat(video.dataset.duration || "0") || 0;
  var end = parseFloat(video.dataset.end || "");
  if (!(end > start)) end = duration;
  var stopAt = end;  // cleared once the viewer seeks elsewhere or plays on past the segment
  function seek(t) {
    if (Math.abs(video.currentTime - t) > 0.05) video.currentTime = t;
  }
  function check() {
    if (stopAt !== null && video.currentTime >= stopAt - 0.02) {
      video.pause();
      stopAt = null;
    }
  }
  // timeupdate fires only every 250 ms or so; checking every animation frame while playing
  // stops within a frame of the segment's end.
  function poll() {
    check();
    if (!video.paused && stopAt !== null) window.requestAnimationFrame(poll);
  }
  video.addEventListener("timeupdate", check);
  video.addEventListener("play", function () { window.requestAnimationFrame(poll); });
  if (video.readyState >= 1) seek(start);
  else video.addEventListener("loadedmetadata", function () { seek(start); }, { once: true });
  var bar = document.getElementById("segment");
  if (bar && duration > 0) {
    bar.style.left = (100 * start / duration) + "%";
    bar.style.width = Math.max(0.5, 100 * (end - start) / duration) + "%";
  }
  var again = document.getElementById("play-segment");
  if (again) again.addEventListener("click", function () {
    stopAt = end;
    video.currentTime = start;
    video.play();
  });
  document.querySelectorAll("[data-seek]").forEach(function (button) {
    button.addEventListener("click", function () {
      stopAt = null;
      seek(parseFloat(button.dataset.seek) || 0);
      video.play();
    });
  });
});
