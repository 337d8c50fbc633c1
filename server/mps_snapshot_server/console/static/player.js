// Storyboard player: the scrub bar previews the thumbnail the WebVTT track names for the
// time under the pointer (a sprite cell via #xywh=x,y,w,h, or a whole image).
"use strict";
(function () {
  const config = JSON.parse(document.getElementById("player-config").textContent);
  const video = document.getElementById("video");
  const scrub = document.getElementById("scrub");
  const played = document.getElementById("played");
  const preview = document.getElementById("preview");
  const previewImage = document.getElementById("preview-image");
  const previewTime = document.getElementById("preview-time");
  const clock = document.getElementById("clock");
  const play = document.getElementById("play");
  let cues = [];

  function seconds(text) {
    const parts = text.trim().split(":").map(Number);
    return parts.reduce((total, part) => total * 60 + part, 0);
  }

  function clockText(t) {
    const s = Math.max(0, Math.floor(t));
    return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
  }

  function parse(text) {
    const found = [];
    for (const block of text.replace(/\r/g, "").split(/\n\n+/)) {
      const lines = block.split("\n");
      const at = lines.findIndex((line) => line.includes("-->"));
      if (at < 0 || at + 1 >= lines.length) continue;
      const [start, end] = lines[at].split("-->").map((part) => seconds(part.split(" ").filter(Boolean)[0]));
      const target = lines[at + 1].trim();
      const hash = target.indexOf("#xywh=");
      const name = hash < 0 ? target : target.slice(0, hash);
      const box = hash < 0 ? null : target.slice(hash + 6).split(",").map(Number);
      found.push({ start, end, name, box });
    }
    return found;
  }

  function duration() {
    if (Number.isFinite(video.duration) && video.duration > 0) return video.duration;
    return cues.length ? cues[cues.length - 1].end : 0;
  }

  function timeAt(event) {
    const rect = scrub.getBoundingClientRect();
    const fraction = Math.min(1, Math.max(0, (event.clientX - rect.left) / rect.width));
    return { fraction, t: fraction * duration(), x: event.clientX - rect.left, width: rect.width };
  }

  function show(event) {
    const { t, x, width } = timeAt(event);
    const index = cues.findIndex((cue) => cue.start <= t && t < cue.end);
    if (index < 0) { preview.hidden = true; return; }
    const cue = cues[index];
    const url = config.targets[cue.name];
    if (!url) { preview.hidden = true; return; }
    const [bx, by, bw, bh] = cue.box || [0, 0, 160, 90];
    previewImage.style.width = bw + "px";
    previewImage.style.height = bh + "px";
    previewImage.style.backgroundImage = 'url("' + url + '")';
    previewImage.style.backgroundPosition = cue.box ? -bx + "px " + -by + "px" : "center";
    previewImage.style.backgroundSize = cue.box ? "auto" : "cover";
    previewTime.textContent = clockText(t);
    preview.style.left = Math.min(Math.max(0, x - bw / 2), Math.max(0, width - bw)) + "px";
    preview.dataset.cue = String(index);
    preview.dataset.target = cue.name;
    preview.hidden = false;
  }

  scrub.addEventListener("mousemove", show);
  scrub.addEventListener("mouseleave", () => { preview.hidden = true; });
  scrub.addEventListener("click", (event) => { video.currentTime = timeAt(event).t; });
  play.addEventListener("click", () => { if (video.paused) video.play(); else video.pause(); });
  video.addEventListener("play", () => { play.textContent = "Pause"; });
  video.addEventListener("pause", () => { play.textContent = "Play"; });
  function tick() {
    const total = duration();
    played.style.width = (total ? (100 * video.currentTime) / total : 0) + "%";
    clock.textContent = clockText(video.currentTime) + " / " + clockText(total);
  }
  video.addEventListener("timeupdate", tick);
  video.addEventListener("loadedmetadata", tick);

  fetch(config.vtt)
    .then((response) => {
      if (!response.ok) throw new Error("WebVTT track: HTTP " + response.status);
      return response.text();
    })
    .then((text) => {
      cues = parse(text);
      scrub.dataset.cues = String(cues.length);
      scrub.setAttribute("aria-valuemax", String(duration()));
    })
    .catch((error) => { scrub.dataset.error = String(error); });
})();
