// Start the player at the best moment. The #t= media fragment in the src already asks for
// it; setting currentTime once the metadata is known covers browsers that ignore fragments.
document.addEventListener("DOMContentLoaded", function () {
  var video = document.getElementById("player");
  if (!video) return;
  var start = parseFloat(video.dataset.start || "0") || 0;
  function seek(t) {
    if (Math.abs(video.currentTime - t) > 0.05) video.currentTime = t;
  }
  if (video.readyState >= 1) seek(start);
  else video.addEventListener("loadedmetadata", function () { seek(start); }, { once: true });
  document.querySelectorAll("[data-seek]").forEach(function (button) {
    button.addEventListener("click", function () {
      seek(parseFloat(button.dataset.seek) || 0);
      video.play();
    });
  });
});
