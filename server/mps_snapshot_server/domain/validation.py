"""Validation of a SubmitSnapshotJob request, before any storage call or ffmpeg run.

Every rule that can be checked without reading the input is checked here, and all the
violations of one request are reported together so a caller can fix them in one go.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import ImageColor

from mps_snapshot_server.domain import keys
from mps_snapshot_server.domain.errors import FieldViolation, InvalidParameter
from mps_snapshot_server.domain.fit import Fit, parse_fit
from mps_snapshot_server.domain.formats import FormatChoice, ImageFormat, named_by_extension, parse_format, resolve
from mps_snapshot_server.domain.models import FrameType, ObjectRef, SnapshotConfig, SnapshotRequest
from mps_snapshot_server.domain.placeholders import (
    ANIMATED_FILE_PLACEHOLDERS,
    OUTPUT_FILE_PLACEHOLDERS,
    TILE_FILE_PLACEHOLDERS,
    OutputName,
    parse_output_name,
)

MAX_TIME_MS = 100 * 365 * 24 * 3600 * 1000  # a century: only guards against overflow
MAX_INTERVAL_S = 86_400
MAX_NUM = 100_000
MAX_TIME_POINTS = 100
MAX_USER_DATA_BYTES = 1024
MIN_SIZE, MAX_SIZE = 8, 4096
MAX_GRID = 10_000
MAX_SPACING = 4096
DEFAULT_INTERVAL_S = 10
DEFAULT_GRID = 10
#: Animated previews: at most this many frames, this long, this large a side.
MAX_ANIMATED_FRAMES = 300
MAX_ANIMATED_MS = 60_000
MAX_ANIMATED_SIDE = 1920
MAX_ANIMATED_FPS = 30
#: The smallest IntervalPercent: one image every 0.1 % of the video, at most 1,000 images.
MIN_INTERVAL_PERCENT = 0.1


@dataclass(frozen=True)
class ValidRequest:
    """A request that passed validation, with its keys decoded and defaults resolved."""

    request: SnapshotRequest
    config: SnapshotConfig
    input: ObjectRef
    input_key: str
    output_file: ObjectRef
    output_name: OutputName
    tile_name: OutputName | None
    frame_type: FrameType
    background: tuple[int, int, int]
    # Beyond MPS; the defaults are what an MPS request gets.
    image_format: ImageFormat = ImageFormat.JPEG
    sprite_format: ImageFormat = ImageFormat.JPEG
    vtt: bool = False
    fit: Fit | None = None
    pad_color: tuple[int, int, int] = (0, 0, 0)
    animated_name: OutputName | None = None

    @property
    def is_async(self) -> bool:
        return self.config.is_async


class _Checker:
    def __init__(self) -> None:
        self.violations: list[tuple[FieldViolation, str]] = []

    def add(self, field: str, description: str, code: str = "InvalidParameter") -> None:
        self.violations.append((FieldViolation(field, description), code))

    def guard(self, fn: object, *args: object) -> object:
        try:
            return fn(*args)  # type: ignore[operator]
        except InvalidParameter as exc:
            for v in exc.violations:
                self.add(v.field, v.description, exc.code)
            return None

    def range(self, field: str, value: float | None, lo: float, hi: float, unit: str = "") -> None:
        if value is not None and not lo <= value <= hi:
            self.add(field, f"{value}{unit} is out of range; use {lo}-{hi}{unit}.", "InvalidParameter.OutOfRange")

    def raise_if_any(self) -> None:
        if self.violations:
            first_code = self.violations[0][1]
            fields = ", ".join(v.field for v, _ in self.violations)
            detail = " ".join(f"{v.field}: {v.description}" for v, _ in self.violations)
            raise InvalidParameter(
                f"The request has invalid fields ({fields}). {detail}",
                code=first_code,
                violations=tuple(v for v, _ in self.violations),
            )


def parse_color(color: str) -> tuple[int, int, int]:
    """MPS colour forms: keywords in any case, #RRGGBB (and #RGB), 0xRRGGBB."""
    text = color.strip().lower() or "black"
    if text == "random":
        raise ValueError("'random' is not supported; name a colour such as black or #1a2b3c")
    if text.startswith("0x"):
        text = "#" + text[2:]
    if not (text.startswith("#") or text.isalpha()):
        raise ValueError(f"{color!r} is not a colour; use a keyword such as black or #RRGGBB")
    try:
        rgb = ImageColor.getrgb(text)
    except ValueError:
        raise ValueError(f"{color!r} is not a colour; use a keyword such as black or #RRGGBB") from None
    return rgb[0], rgb[1], rgb[2]


def _check_ref(c: _Checker, ref: ObjectRef | None, field: str) -> bool:
    if ref is None:
        c.add(field, f"{field} is required: give Bucket, Location and Object.", "InvalidParameter.NullValue")
        return False
    c.guard(keys.check_bucket, ref.bucket, f"{field}.bucket")
    c.guard(keys.check_location, ref.location, f"{field}.location")
    return True


def _check_user_data(c: _Checker, user_data: str) -> None:
    if not user_data:
        return
    if len(user_data.encode()) > MAX_USER_DATA_BYTES:
        c.add("user_data", f"UserData is longer than {MAX_USER_DATA_BYTES} bytes.", "InvalidParameter.OutOfRange")
    elif not all(ch.isalnum() or ch == "-" for ch in user_data) or not user_data[0].isalnum():
        c.add(
            "user_data",
            "UserData may hold only letters, digits and hyphens, and must start with a letter or digit.",
        )


def may_write_many_images(config: SnapshotConfig) -> bool:
    if config.time_points is not None and len(config.time_points) > 0:
        return len(config.time_points) > 1
    if config.num is not None:
        return config.num > 1
    return config.interval is not None or config.tile_out is not None


def keeps_cell_pics(config: SnapshotConfig) -> bool:
    tile = config.tile_out
    return tile is None or tile.is_keep_cell_pic is None or tile.is_keep_cell_pic


def validate(request: SnapshotRequest) -> ValidRequest:
    c = _Checker()
    _check_user_data(c, request.user_data)
    input_key = None
    if _check_ref(c, request.input, "input"):
        assert request.input is not None
        input_key = c.guard(keys.decode_key, request.input.object, "input.object")
    config = request.config
    if config is None:
        c.add("snapshot_config", "SnapshotConfig is required.", "InvalidParameter.NullValue")
        c.raise_if_any()
        raise AssertionError("unreachable")
    output_name: OutputName | None = None
    tile_name: OutputName | None = None
    if _check_ref(c, config.output_file, "snapshot_config.output_file"):
        assert config.output_file is not None
        output_name = _check_output_name(
            c, config.output_file, "snapshot_config.output_file.object", OUTPUT_FILE_PLACEHOLDERS, input_key
        )
    c.range("snapshot_config.time", config.time, 0, MAX_TIME_MS, " ms")
    c.range("snapshot_config.interval", config.interval, 0, MAX_INTERVAL_S, " s")
    c.range("snapshot_config.num", config.num, 1, MAX_NUM)
    c.range("snapshot_config.width", config.width, MIN_SIZE, MAX_SIZE, " px")
    c.range("snapshot_config.height", config.height, MIN_SIZE, MAX_SIZE, " px")
    c.range("snapshot_config.black_level", config.black_level, 30, 100)
    c.range("snapshot_config.pixel_black_threshold", config.pixel_black_threshold, 0, 255)
    frame_type = FrameType.NORMAL
    try:
        frame_type = config.effective_frame_type
    except ValueError:
        c.add("snapshot_config.frame_type", f"FrameType {config.frame_type!r} is unknown; use normal or intra.")
    choice = FormatChoice(None, False)
    try:
        choice = parse_format(config.format)
    except ValueError as exc:
        c.add("snapshot_config.format", f"{exc}.")
    if choice.vtt and not config.is_async:
        c.add(
            "snapshot_config.format",
            "Format vtt needs a sequence of snapshots: set Interval, Num, TimeArray or TileOut.",
        )
    image_format = resolve(choice, config.output_file.object if config.output_file else "")
    sprite_format = resolve(choice, config.tile_output_file.object if config.tile_output_file else "")
    fit, pad_color = _check_beyond(c, config, image_format, sprite_format)
    _check_combinations(c, config, choice, image_format, sprite_format, fit)
    if config.time_points is not None:
        _check_time_points(c, config.time_points)
    background = (0, 0, 0)
    if config.tile_out is not None:
        tile = config.tile_out
        c.range("snapshot_config.tile_out.lines", tile.lines, 1, MAX_GRID)
        c.range("snapshot_config.tile_out.columns", tile.columns, 1, MAX_GRID)
        c.range("snapshot_config.tile_out.cell_width", tile.cell_width, MIN_SIZE, MAX_SIZE, " px")
        c.range("snapshot_config.tile_out.cell_height", tile.cell_height, MIN_SIZE, MAX_SIZE, " px")
        c.range("snapshot_config.tile_out.margin", tile.margin, 0, MAX_SPACING, " px")
        c.range("snapshot_config.tile_out.padding", tile.padding, 0, MAX_SPACING, " px")
        c.range("snapshot_config.tile_out.cell_sel_step", tile.cell_sel_step, 1, MAX_NUM)
        try:
            background = parse_color(tile.color)
        except ValueError as exc:
            c.add("snapshot_config.tile_out.color", f"Color {exc}.")
        if _check_ref(c, config.tile_output_file, "snapshot_config.tile_output_file"):
            assert config.tile_output_file is not None
            tile_name = _check_output_name(
                c, config.tile_output_file, "snapshot_config.tile_output_file.object", TILE_FILE_PLACEHOLDERS, input_key
            )
    if (
        output_name is not None
        and may_write_many_images(config)
        and keeps_cell_pics(config)
        and "Count" not in output_name.names
    ):
        c.add(
            "snapshot_config.output_file.object",
            "This job writes more than one image, so OutputFile.Object must contain {Count} "
            "(for example snap-{Count}.jpg).",
        )
    animated_name: OutputName | None = None
    if config.animated_out is not None and _check_ref(
        c, config.animated_output_file, "snapshot_config.animated_output_file"
    ):
        assert config.animated_output_file is not None
        animated_name = _check_output_name(
            c,
            config.animated_output_file,
            "snapshot_config.animated_output_file.object",
            ANIMATED_FILE_PLACEHOLDERS,
            input_key,
        )
    if isinstance(input_key, str) and request.input is not None:
        for ref, name, field in (
            (config.output_file, output_name, "snapshot_config.output_file.object"),
            (config.tile_output_file if config.tile_out is not None else None, tile_name, _TILE_FIELD),
            (
                config.animated_output_file if config.animated_out is not None else None,
                animated_name,
                "snapshot_config.animated_output_file.object",
            ),
        ):
            if ref is not None and name is not None and ref.bucket == request.input.bucket:
                if name.render(input_key=input_key) == input_key and not name.names & _PER_IMAGE:
                    c.add(field, _is_input_message(request.input.bucket, input_key))
    c.raise_if_any()
    assert request.input is not None and isinstance(input_key, str)
    assert config.output_file is not None and output_name is not None
    return ValidRequest(
        request=request,
        config=config,
        input=request.input,
        input_key=input_key,
        output_file=config.output_file,
        output_name=output_name,
        tile_name=tile_name,
        frame_type=frame_type,
        background=background,
        image_format=image_format,
        sprite_format=sprite_format,
        vtt=choice.vtt,
        fit=fit,
        pad_color=pad_color,
        animated_name=animated_name,
    )


_PER_IMAGE = frozenset({"Count", "SnapshotTime", "TileCount"})
_TILE_FIELD = "snapshot_config.tile_output_file.object"


def _is_input_message(bucket: str, key: str) -> str:
    return (
        f"The output would replace the input itself ({bucket}/{key}); choose another Object (for example "
        "{ObjectPrefix}{FileName}.jpg) or another Bucket. A job never overwrites its own input."
    )


def check_not_input(valid: ValidRequest, bucket: str, key: str, field: str) -> None:
    """Refuse to write ``bucket``/``key`` when it is the job's input (checked for every
    object written: placeholders can render to the input's name for some image)."""
    if bucket == valid.input.bucket and key == valid.input_key:
        raise InvalidParameter.field(field, _is_input_message(bucket, key))


def _check_output_name(
    c: _Checker, ref: ObjectRef, field: str, allowed: frozenset[str], input_key: object
) -> OutputName | None:
    try:
        decoded = keys.decode_key(ref.object, field) if ref.object else ""
    except InvalidParameter as exc:
        for v in exc.violations:
            c.add(v.field, v.description, exc.code)
        return None
    if not decoded:
        c.add(field, "Object is required.", "InvalidParameter.ObjectKeyInvalid")
        return None
    name = c.guard(parse_output_name, decoded, field, allowed)
    if not isinstance(name, OutputName):
        return None
    if isinstance(input_key, str):
        c.guard(keys.check_key, name.render(input_key=input_key), field)
    return name


def _check_time_points(c: _Checker, points: tuple[float, ...]) -> None:
    field = "snapshot_config.time_array.time_point_list"
    if len(points) > MAX_TIME_POINTS:
        c.add(
            field,
            f"TimePointList has {len(points)} points; at most {MAX_TIME_POINTS} are allowed.",
            "InvalidParameter.TimeArray",
        )
        return
    for i, p in enumerate(points):
        if not math.isfinite(p) or not 0 <= p <= MAX_TIME_MS:
            c.add(f"{field}[{i}]", f"{p} is not a time in milliseconds of 0 or more.", "InvalidParameter.TimeArray")
        elif abs(round(p * 100) - p * 100) > 1e-6:
            c.add(
                f"{field}[{i}]", f"{p} has more than two decimals; round it to 0.01 ms.", "InvalidParameter.TimeArray"
            )


def _two_decimals(value: float) -> bool:
    return abs(round(value * 100) - value * 100) <= 1e-6


def _check_percent(c: _Checker, field: str, value: float, *, low_open: bool = False) -> None:
    ok = math.isfinite(value) and (0 < value <= 100 if low_open else 0 <= value < 100)
    if not ok:
        span = "above 0 up to 100" if low_open else "from 0 up to (not including) 100"
        c.add(field, f"{value} is not a percentage {span}.", "InvalidParameter.OutOfRange")
    elif not _two_decimals(value):
        c.add(field, f"{value} has more than two decimals; round it to 0.01.")


def _check_beyond(
    c: _Checker, config: SnapshotConfig, image: ImageFormat, sprite: ImageFormat
) -> tuple[Fit | None, tuple[int, int, int]]:
    """The fields beyond MPS (formats, fit, percent times, auto grid, animation, smart picks)."""
    f = "snapshot_config."
    c.range(f + "quality", config.quality, 1, 100)
    if config.lossless and ImageFormat.WEBP not in (image, sprite):
        c.add(f + "lossless", "Lossless applies to WebP only; set Format webp (or drop Lossless).")
    fit: Fit | None = None
    if config.fit is not None:
        try:
            fit = parse_fit(config.fit)
        except ValueError as exc:
            c.add(f + "fit", f"{exc}.")
    pad = (0, 0, 0)
    if config.pad_color is not None:
        try:
            pad = parse_color(config.pad_color)
        except ValueError as exc:
            c.add(f + "pad_color", f"PadColor {exc}.")
    _check_times(c, config)
    _check_animated(c, config)
    smart = config.smart_pick
    if smart is not None:
        c.range(f + "smart_pick.window", smart.window, 200, 20_000, " ms")
        c.range(f + "smart_pick.max_blur", smart.max_blur, 1, 100)
    return fit, pad


def _check_combinations(
    c: _Checker,
    config: SnapshotConfig,
    choice: FormatChoice,
    image: ImageFormat,
    sprite: ImageFormat,
    fit: Fit | None,
) -> None:
    """Combinations that are accepted field by field but cannot succeed, or are meaningless
    (docs/api.md "Refused combinations")."""
    f = "snapshot_config."
    used = {image} | ({sprite} if config.tile_out is not None else set())
    if config.quality is not None:
        lossy = ImageFormat.JPEG in used or (ImageFormat.WEBP in used and not config.lossless)
        if not lossy:
            if ImageFormat.WEBP in used:
                c.add(f + "quality", "Quality has no meaning with Lossless true (WebP); drop Quality or Lossless.")
            else:
                c.add(f + "quality", "Quality has no meaning for Format png (PNG is lossless); drop Quality.")
    if fit in (Fit.CROP, Fit.PAD) and (config.width is None) != (config.height is None):
        c.add(
            f + "fit",
            f"Fit {fit.value} needs both Width and Height (with only one, the other follows the aspect "
            "ratio and Fit has nothing to do); set both, or drop Fit.",
        )
    if config.pad_color is not None and fit is not Fit.PAD:
        c.add(f + "pad_color", "PadColor applies only with Fit pad; set Fit pad (and Width, Height) or drop PadColor.")
    if choice.image is not None:
        for ref, field in (
            (config.output_file, f + "output_file.object"),
            (config.tile_output_file if config.tile_out is not None else None, _TILE_FIELD),
        ):
            named = named_by_extension(ref.object) if ref is not None else None
            if named is not None and named is not choice.image:
                c.add(
                    field,
                    f"Format {choice.image.value} writes {choice.image.value.upper()} images, but the Object ends "
                    f"in .{_ext(ref.object if ref else '')}; end it in .{choice.image.value} (or drop Format).",
                    "InvalidParameter.Format",
                )
    if choice.vtt and config.tile_out is not None and not keeps_cell_pics(config) and not config.sub_out_is_spt_frag:
        c.add(
            f + "format",
            "Format vtt needs images to point at, but TileOut.IsKeepCellPic false keeps no single snapshot and "
            "SubOut.IsSptFrag is not true; set IsKeepCellPic true, or SubOut.IsSptFrag true, or drop vtt.",
            "InvalidParameter.Format",
        )


def _ext(key: str) -> str:
    return key.rpartition(".")[2]


def _check_times(c: _Checker, config: SnapshotConfig) -> None:
    f = "snapshot_config."
    if config.time_percent is not None:
        _check_percent(c, f + "time_percent", config.time_percent)
        if config.time is not None:
            c.add(f + "time_percent", "Give Time or TimePercent, not both.")
    if config.interval_percent is not None:
        _check_percent(c, f + "interval_percent", config.interval_percent, low_open=True)
        if math.isfinite(config.interval_percent) and 0 < config.interval_percent < MIN_INTERVAL_PERCENT:
            c.add(
                f + "interval_percent",
                f"{config.interval_percent} is below the minimum {MIN_INTERVAL_PERCENT} (one image every "
                f"{MIN_INTERVAL_PERCENT} % of the video, at most {round(100 / MIN_INTERVAL_PERCENT)} images); "
                "use a larger IntervalPercent or Num.",
                "InvalidParameter.OutOfRange",
            )
        if config.interval is not None:
            c.add(f + "interval_percent", "Give Interval or IntervalPercent, not both.")
    points = config.time_percent_points
    field = f + "time_array.time_percent_list"
    if points:
        if config.time_points:
            c.add(field, "Give TimePointList or TimePercentList, not both.", "InvalidParameter.TimeArray")
        if len(points) > MAX_TIME_POINTS:
            c.add(field, f"TimePercentList has {len(points)} points; at most {MAX_TIME_POINTS} are allowed.")
        else:
            for i, p in enumerate(points):
                _check_percent(c, f"{field}[{i}]", p)
    tile = config.tile_out
    if tile is not None and tile.auto_cells is not None:
        c.range(f + "tile_out.auto_cells", tile.auto_cells, 1, MAX_GRID)
        if config.interval is not None or config.num is not None or config.interval_percent is not None:
            c.add(f + "tile_out.auto_cells", "AutoCells chooses the times itself; drop Interval and Num.")
        if config.time_points or points:
            c.add(f + "tile_out.auto_cells", "AutoCells chooses the times itself; drop TimeArray.")


def _check_animated(c: _Checker, config: SnapshotConfig) -> None:
    f = "snapshot_config."
    anim = config.animated_out
    if anim is not None:
        a = f + "animated_out."
        c.range(a + "start", anim.start, 0, MAX_TIME_MS, " ms")
        if anim.start_percent is not None:
            _check_percent(c, a + "start_percent", anim.start_percent)
            if anim.start is not None:
                c.add(a + "start_percent", "Give Start or StartPercent, not both.")
        c.range(a + "duration", anim.duration, 100, MAX_ANIMATED_MS, " ms")
        c.range(a + "fps", anim.fps, 1, MAX_ANIMATED_FPS)
        c.range(a + "width", anim.width, MIN_SIZE, MAX_ANIMATED_SIDE, " px")
        c.range(a + "height", anim.height, MIN_SIZE, MAX_ANIMATED_SIDE, " px")
        c.range(a + "quality", anim.quality, 1, 100)
        c.range(a + "max_bytes", anim.max_bytes, 1024, 2**31 - 1)
        c.range(a + "loop", anim.loop, 0, 65535)
        if anim.format is not None and anim.format.lower() not in ("webp", "gif"):
            c.add(a + "format", f"Format {anim.format!r} is unknown for an animation; use webp or gif.")
        frames = math.ceil((anim.duration or 3000) / 1000 * (anim.fps or 10))
        if frames > MAX_ANIMATED_FRAMES:
            c.add(
                a + "duration",
                f"The animation would have {frames} frames, more than {MAX_ANIMATED_FRAMES}; "
                "use a shorter Duration or a lower Fps.",
                "InvalidParameter.OutOfRange",
            )
