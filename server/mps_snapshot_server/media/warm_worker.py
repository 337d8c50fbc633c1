"""A warm decoder worker: the child process of ``mps_snapshot_server.media.warm``.

It keeps recently used local inputs open (the demuxer's index parsed once, the decoder
initialised once) and answers capture requests, one JSON line in on stdin, one JSON line out,
so a snapshot costs a seek, the decode from the keyframe and a JPEG encode instead of a
whole ffmpeg process. It starts through the same containment as ffmpeg (process.start_worker:
pdeathsig, rlimits, its own session, a minimal environment) and opens every input with the
same whitelists as ffmpeg's argv (hardening).

It decides nothing about which frame is right: it reports the time of every frame it
decoded and which one it wrote, and the server checks that against ``domain.frames`` like
the log of an ffmpeg run. Anything it does not know how to do exactly as the ffmpeg path
does (another codec or pixel format, rotation, non-square pixels, a frame without a
timestamp) it refuses, and the server takes the ffmpeg path instead.

Run as a script (``python -I warm_worker.py``): it imports only the standard library and
PyAV, never the server's packages, so it starts fast and wherever the code lives.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from collections import OrderedDict
from fractions import Fraction
from typing import Any

#: Inputs kept open per worker (least recently used first out).
OPEN_INPUTS = 4
#: "At or before T" tolerance, as domain.frames.TOL.
TOL = 1e-6
#: Decoders this worker runs; the server sends nothing else (warm.serves), this is the backstop.
CODECS = frozenset({"h264", "hevc"})
PIXEL_FORMATS = frozenset({"yuv420p", "yuvj420p"})
#: The mjpeg encoder's lambda per quantiser step (FFmpeg's FF_QP2LAMBDA): -q:v N is N of these.
_QP2LAMBDA = 118


class Refused(Exception):
    """Not a case this worker serves exactly; the server takes the ffmpeg path."""


class Worker:
    def __init__(self, av: Any, image: Any) -> None:
        self.av = av
        #: PIL.Image
        self.image = image
        self.qtables: dict[int, Any] = {}
        self.inputs: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    def container(self, req: dict[str, Any]) -> Any:
        key = (req["url"], *req["version"])
        found = self.inputs.get(key)
        if found is not None:
            self.inputs.move_to_end(key)
            return found
        # The same bounds as ffmpeg's input options (hardening.input_options), given to the
        # demuxer and to every decoder it opens.
        options = {str(k): str(v) for k, v in req["options"].items()}
        container = self.av.open(req["url"], mode="r", options=options, container_options=options)
        video = container.streams.video[0] if container.streams.video else None
        if video is None or video.codec_context.name not in CODECS:
            container.close()
            raise Refused("codec")
        # Only the video stream is read: the demuxer skips every other stream's packets.
        for stream in container.streams:
            if stream.index != video.index:
                with contextlib.suppress(AttributeError, KeyError, TypeError, ValueError):
                    stream.discard = type(stream.discard)["all"]  # an enum since PyAV 14
        video.thread_type = "AUTO"
        video.thread_count = int(req.get("threads", 0))
        self.inputs[key] = container
        while len(self.inputs) > OPEN_INPUTS:
            _, old = self.inputs.popitem(last=False)
            old.close()
        return container

    def index(self, req: dict[str, Any]) -> dict[str, Any]:
        """The keyframe index, as ffprobe's ``packet=pts,dts,flags:stream=time_base`` CSV
        (argv.key_index_argv) lists it, for probe.parse_key_index: the pts and dts of every
        video packet the container flags as a keyframe, and the stream's time base. One
        demux of the whole file, from a container of its own (the cached ones keep their
        place)."""
        options = {str(k): str(v) for k, v in req["options"].items()}
        with self.av.open(req["url"], mode="r", options=options, container_options=options) as container:
            video = container.streams.video[0] if container.streams.video else None
            if video is None or video.codec_context.name not in CODECS:
                raise Refused("codec")
            for stream in container.streams:
                if stream.index != video.index:
                    with contextlib.suppress(AttributeError, KeyError, TypeError, ValueError):
                        stream.discard = type(stream.discard)["all"]
            lines = [f"{video.time_base.numerator}/{video.time_base.denominator}"]
            for packet in container.demux(video):
                if packet.is_keyframe and packet.pts is not None:
                    lines.append(f"{packet.pts},{'N/A' if packet.dts is None else packet.dts},K_")
        return {"ok": True, "csv": "\n".join(lines)}

    def drop(self, req: dict[str, Any]) -> None:
        old = self.inputs.pop((req["url"], *req["version"]), None)
        if old is not None:
            old.close()

    def tables(self, qscale: int) -> Any:
        """The quantisation tables FFmpeg's mjpeg encoder writes at ``-q:v qscale``, read
        from a 16x16 encode (cached): Pillow then quantises a frame exactly as the ffmpeg
        path's encoder does. (Encoding with the mjpeg encoder itself at 1080p costs 35 MB
        more memory per worker, and more time, than libjpeg-turbo.)"""
        found = self.qtables.get(qscale)
        if found is None:
            ctx = self.av.CodecContext.create("mjpeg", "w")
            ctx.width = ctx.height = 16
            ctx.pix_fmt = "yuvj420p"
            ctx.time_base = Fraction(1, 25)
            # -q:v N: a fixed quantiser (qmin/qmax pinned so the rate control keeps it).
            ctx.qscale = True
            ctx.global_quality = qscale * _QP2LAMBDA
            ctx.qmin = ctx.qmax = qscale
            tiny = self.av.VideoFrame(16, 16, "yuvj420p")
            for plane in tiny.planes:
                plane.update(bytes(plane.buffer_size))
            data = b"".join(bytes(p) for p in [*ctx.encode(tiny), *ctx.encode(None)])
            with self.image.open(io.BytesIO(data)) as img:
                found = self.qtables[qscale] = img.quantization
        return found

    def exact(self, req: dict[str, Any]) -> dict[str, Any]:
        """Seek to the keyframe at or before ``seek`` (absolute seconds, the file's clock),
        decode up to the first frame after ``target``, write the last frame at or before it
        (or the first frame, when the seek was from the start and none is)."""
        started = time.perf_counter()
        container = self.container(req)
        video = container.streams.video[0]
        tb = video.time_base
        target = Fraction(req["target"])
        # Floor: a seek that lands a keyframe early costs frames, never the answer.
        seek_ts = int(Fraction(req["seek"]) / tb)
        container.seek(seek_ts, stream=video, backward=True, any_frame=False)
        skip = req.get("skip", True) and _avcc_length_size(video)
        if skip and (fast := self.skipping(container, video, target, req)) is not None:
            fast["ms"] = [round((time.perf_counter() - started) * 1000, 1), fast.pop("encode_ms")]
            return fast
        container.seek(seek_ts, stream=video, backward=True, any_frame=False)
        decoded: list[float] = []
        first: Any = None
        chosen: Any = None
        limit = int(req["max_frames"])
        for frame in container.decode(video):
            if frame.pts is None:
                raise Refused("a frame without a timestamp")
            t = frame.pts * tb
            decoded.append(float(t))
            first = frame if first is None else first
            if t > target + Fraction(TOL):
                break
            chosen = frame
            if len(decoded) >= limit:
                raise Refused("too many frames before the target")
        if chosen is None and req["from_start"]:
            # T before the first frame: the first frame is what a player shows.
            chosen = first
        answer: dict[str, Any] = {"ok": True, "decoded": decoded, "written": None}
        decoding = time.perf_counter() - started
        if chosen is not None:
            width, height = self.write(chosen, req)
            answer.update(written=float(chosen.pts * tb), width=width, height=height)
        # Where the time went (open+seek+decode, scale+encode+write), for logs and benchmarks.
        answer["ms"] = [round(decoding * 1000, 1), round((time.perf_counter() - started - decoding) * 1000, 1)]
        return answer

    def skipping(self, container: Any, video: Any, target: Fraction, req: dict[str, Any]) -> dict[str, Any] | None:
        """The same answer as ``exact`` while decoding only what the frame at T needs.

        Every frame shown at or before T precedes, in decoding order, the first packet whose
        decoding time is after T (a frame is never decoded after it is shown), so the packets
        read up to there name the frame at T: the latest presentation time at or before T.
        Decoding it needs only the packets before it in decoding order, and of those not the
        H.264 pictures no other picture refers to (every slice with nal_ref_idc 0: about
        half of an x264 stream's B-frames). The answer's timeline is every packet's time up
        to and including that first packet after T, as a full decode would have shown them;
        the frame at T itself must come out of the decoder with its own time. None: not
        provable this way (the end of the file, a seek that landed after T, a missing or
        repeated timestamp); ``exact`` then decodes every frame."""
        tb = video.time_base
        limit = target + Fraction(TOL)
        packets: list[Any] = []
        for packet in container.demux(video):
            if packet.dts is None or packet.pts is None:
                return None  # includes the empty packet at the end of the file
            packets.append(packet)
            if packet.dts * tb > limit:
                break
            if len(packets) >= int(req["max_frames"]):
                return None
        else:
            return None
        times = [p.pts for p in packets]
        at_or_before = [t for t in times if t * tb <= limit]
        if not at_or_before or len(set(times)) != len(times):
            return None
        chosen_pts = max(at_or_before)
        last = times.index(chosen_pts)
        size = _avcc_length_size(video)
        ctx = video.codec_context
        chosen: Any = None
        skipped = 0
        for n, packet in enumerate([*packets[: last + 1], None]):
            if packet is not None and n < last and not packet.is_keyframe and _unreferenced(bytes(packet), size):
                skipped += 1
                continue
            for frame in ctx.decode(packet):  # None drains the decoder's reordering delay
                if frame.pts == chosen_pts:
                    chosen = frame
        if chosen is None:
            return None
        began = time.perf_counter()
        width, height = self.write(chosen, req)
        return {
            "ok": True,
            "decoded": sorted(float(t * tb) for t in times),
            "skipped": skipped + len(packets) - last - 1,
            "written": float(chosen_pts * tb),
            "width": width,
            "height": height,
            "encode_ms": round((time.perf_counter() - began) * 1000, 1),
        }

    def write(self, frame: Any, req: dict[str, Any]) -> tuple[int, int]:
        if frame.format.name not in PIXEL_FORMATS:
            raise Refused(f"pixel format {frame.format.name}")
        if getattr(frame, "rotation", 0):
            raise Refused("rotation")
        width, height = int(req["width"]), int(req["height"])
        # The scale filter of the ffmpeg path (argv.scale_chain): Lanczos to the output size
        # and the encoder's full-range YCbCr format, in one swscale pass, so the planes are
        # the ones that path encodes. libjpeg-turbo then encodes them without a colour
        # conversion: 4:2:0 chroma goes in repeated 2x2 (libjpeg's 2x2 average gives each
        # sample back exactly), at the mjpeg encoder's tables.
        full = bool(req["full_chroma"])
        picture = frame.reformat(
            width=width, height=height, format="yuvj444p" if full else "yuvj420p", interpolation="LANCZOS"
        )
        planes = []
        for n, plane in enumerate(picture.planes):
            size = (plane.width, plane.height)
            img = self.image.frombuffer("L", size, plane, "raw", "L", plane.line_size, 1)
            if n and not full:
                img = img.resize((width, height), self.image.Resampling.NEAREST)
            planes.append(img)
        buffer = io.BytesIO()
        self.image.merge("YCbCr", planes).save(
            buffer, "JPEG", qtables=self.tables(int(req["qscale"])), subsampling=0 if full else 2
        )
        data = buffer.getvalue()
        with open(req["out"], "wb") as out:
            out.write(data)
        return width, height


def _avcc_length_size(video: Any) -> int:
    """The NAL length size of an H.264 stream in MP4 form (avcC extradata), 0 otherwise."""
    if video.codec_context.name != "h264":
        return 0
    extra = video.codec_context.extradata or b""
    return (extra[4] & 3) + 1 if len(extra) > 6 and extra[0] == 1 else 0


def _unreferenced(data: bytes, size: int) -> bool:
    """Whether an H.264 access unit (length-prefixed NAL units) is a picture no other picture
    refers to: it has slices, and every slice NAL unit has nal_ref_idc 0."""
    i, slices = 0, 0
    while i + size < len(data):
        length = int.from_bytes(data[i : i + size], "big")
        header = data[i + size]
        if header & 0x1F in (1, 5):  # coded slice (non-IDR, IDR)
            if header & 0x60:
                return False
            slices += 1
        i += size + length
    return slices > 0 and i == len(data)


def main() -> None:
    # The protocol has stdout to itself: anything a library prints goes to stderr.
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import av  # after the redirect: its import must not write to the protocol
    from PIL import Image

    av.logging.set_level(None)
    worker = Worker(av, Image)
    reply.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        try:
            answer = worker.index(req) if req.get("op") == "index" else worker.exact(req)
        except Refused as exc:
            answer = {"ok": False, "reason": str(exc)}
        except (av.FFmpegError, OSError, ValueError) as exc:
            # A read or decode error: the ffmpeg path judges the input and reports it.
            worker.drop(req)
            answer = {"ok": False, "reason": f"{type(exc).__name__}: {exc}"[:200], "error": True}
        reply.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
