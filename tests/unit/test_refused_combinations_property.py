"""Property: a request that validate() accepts never fails later with a request-shape error
in the worker's output building (worker/outputs.py): the vtt track always has images to
point at, each image is written under its own format's extension, and Quality, Fit and
PadColor always have an effect."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mps_snapshot_server.domain import validation
from mps_snapshot_server.domain.errors import InvalidParameter
from mps_snapshot_server.domain.fit import Fit
from mps_snapshot_server.domain.formats import ImageFormat, named_by_extension
from mps_snapshot_server.domain.models import ObjectRef, SnapshotConfig, SnapshotRequest, TileOut

_LOC = "oss-cn-shanghai"
_EXT = st.sampled_from(["jpg", "jpeg", "png", "webp", "img"])


@st.composite
def requests(draw: st.DrawFn) -> SnapshotRequest:
    tile = draw(st.booleans())
    keep = draw(st.sampled_from([None, True, False]))
    size = st.one_of(st.none(), st.integers(8, 4096))
    config = SnapshotConfig(
        output_file=ObjectRef("out-bucket", _LOC, "a-{Count}." + draw(_EXT)),
        num=draw(st.sampled_from([None, 3])),
        format=draw(st.sampled_from(["", "jpg", "png", "webp", "vtt", "jpg,vtt", "png,vtt", "webp,vtt"])),
        tile_out=TileOut(lines=2, columns=2, is_keep_cell_pic=keep) if tile else None,
        tile_output_file=ObjectRef("out-bucket", _LOC, "t-{TileCount}." + draw(_EXT)) if tile else None,
        sub_out_is_spt_frag=draw(st.sampled_from([None, True, False])),
        fit=draw(st.sampled_from([None, "stretch", "preserve", "pad", "crop"])),
        width=draw(size),
        height=draw(size),
        quality=draw(st.one_of(st.none(), st.integers(1, 100))),
        lossless=draw(st.sampled_from([None, True, False])),
        pad_color=draw(st.sampled_from([None, "white"])),
    )
    return SnapshotRequest(input=ObjectRef("in-bucket", _LOC, "v.mp4"), config=config)


@settings(max_examples=400, deadline=None)
@given(requests())
def test_an_accepted_request_never_fails_later_on_its_shape(request: SnapshotRequest) -> None:
    try:
        valid = validation.validate(request)
    except InvalidParameter:
        return
    config = valid.config
    # OutputWriter: images are written when keeps_cell_pics; the vtt track points at the
    # sprites only with SubOut.IsSptFrag and sprites, else at the images (else ResourceContentBad).
    keep = validation.keeps_cell_pics(config)
    sprites_written = config.tile_out is not None and valid.tile_name is not None
    if valid.vtt:
        assert keep or (bool(config.sub_out_is_spt_frag) and sprites_written)
    used = {valid.image_format} | ({valid.sprite_format} if config.tile_out is not None else set())
    for ref, fmt in ((config.output_file, valid.image_format), (config.tile_output_file, valid.sprite_format)):
        if ref is not None and (ref is config.output_file or config.tile_out is not None):
            named = named_by_extension(ref.object)
            assert named is None or named is fmt
    if config.quality is not None:
        assert ImageFormat.JPEG in used or (ImageFormat.WEBP in used and not config.lossless)
    if valid.fit in (Fit.CROP, Fit.PAD):
        assert (config.width is None) == (config.height is None)
    if config.pad_color is not None:
        assert valid.fit is Fit.PAD
