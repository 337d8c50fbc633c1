"""Combinations of fields that cannot succeed (or are meaningless) are refused at Submit,
each with an InvalidParameter code and a message naming the fields (docs/api.md
"Refused combinations")."""

from __future__ import annotations

import dataclasses

import pytest

from mps_snapshot_server.domain.errors import InvalidParameter
from mps_snapshot_server.domain.models import ObjectRef, SnapshotConfig, SnapshotRequest, TileOut
from mps_snapshot_server.domain.validation import validate


def _request(**fields: object) -> SnapshotRequest:
    config = SnapshotConfig(output_file=ObjectRef(bucket="out-bucket", location="oss-cn-shanghai", object="a.jpg"))
    config = dataclasses.replace(config, **fields)  # type: ignore[arg-type]
    source = ObjectRef(bucket="in-bucket", location="oss-cn-shanghai", object="v.mp4")
    return SnapshotRequest(input=source, config=config)


def _refused(request: SnapshotRequest) -> InvalidParameter:
    with pytest.raises(InvalidParameter) as info:
        validate(request)
    assert info.value.code.startswith("InvalidParameter")
    return info.value


def _fields(exc: InvalidParameter) -> set[str]:
    return {v.field for v in exc.violations}


def test_webp_lossless_with_quality_is_refused() -> None:
    exc = _refused(_request(format="webp", lossless=True, quality=80, output_file=_out("a.webp")))
    assert "snapshot_config.quality" in _fields(exc)
    assert "Lossless" in str(exc) and "Quality" in str(exc)
    validate(_request(format="webp", lossless=True, output_file=_out("a.webp")))
    validate(_request(format="webp", quality=80, output_file=_out("a.webp")))


def test_png_with_quality_is_refused() -> None:
    exc = _refused(_request(format="png", quality=80, output_file=_out("a.png")))
    assert "snapshot_config.quality" in _fields(exc)
    assert "png" in str(exc).lower()
    validate(_request(format="png", output_file=_out("a.png")))


@pytest.mark.parametrize("fit", ["crop", "pad"])
@pytest.mark.parametrize("side", ["width", "height"])
def test_fit_crop_or_pad_needs_both_sides(fit: str, side: str) -> None:
    exc = _refused(_request(fit=fit, **{side: 320}))
    assert "snapshot_config.fit" in _fields(exc)
    assert "Width" in str(exc) and "Height" in str(exc)
    validate(_request(fit=fit, width=320, height=180))


def test_pad_color_without_fit_pad_is_refused() -> None:
    exc = _refused(_request(pad_color="white", width=320, height=180))
    assert "snapshot_config.pad_color" in _fields(exc)
    exc = _refused(_request(pad_color="white", fit="crop", width=320, height=180))
    assert "snapshot_config.pad_color" in _fields(exc)
    validate(_request(pad_color="white", fit="pad", width=320, height=180))


def _out(name: str) -> ObjectRef:
    return ObjectRef(bucket="out-bucket", location="oss-cn-shanghai", object=name)


@pytest.mark.parametrize("fmt", ["png", "webp", "png,vtt"])
def test_an_image_format_under_a_jpg_name_is_refused(fmt: str) -> None:
    exc = _refused(_request(format=fmt, num=3, output_file=_out("a-{Count}.jpg")))
    assert "snapshot_config.output_file.object" in _fields(exc)
    ext = fmt.split(",")[0]
    assert f".{ext}" in str(exc)


def test_an_image_format_under_a_jpg_sprite_name_is_refused() -> None:
    exc = _refused(
        _request(
            format="webp",
            output_file=_out("a-{Count}.webp"),
            tile_out=TileOut(lines=2, columns=2),
            tile_output_file=_out("t-{TileCount}.jpg"),
        )
    )
    assert "snapshot_config.tile_output_file.object" in _fields(exc)


def test_vtt_with_tileout_without_cells_or_spt_frag_is_refused() -> None:
    fields = dict(
        format="jpg,vtt",
        output_file=_out("a-{Count}.jpg"),
        tile_out=TileOut(lines=2, columns=2, is_keep_cell_pic=False),
        tile_output_file=_out("t-{TileCount}.jpg"),
    )
    exc = _refused(_request(**fields))
    assert "snapshot_config.format" in _fields(exc)
    assert "IsKeepCellPic" in str(exc) and "IsSptFrag" in str(exc)
    validate(_request(**fields, sub_out_is_spt_frag=True, has_sub_out=True))
    validate(_request(**{**fields, "tile_out": TileOut(lines=2, columns=2, is_keep_cell_pic=True)}))


def test_interval_percent_has_a_minimum() -> None:
    exc = _refused(_request(interval_percent=0.01, output_file=_out("a-{Count}.jpg")))
    assert "snapshot_config.interval_percent" in _fields(exc)
    assert exc.code == "InvalidParameter.OutOfRange"
    validate(_request(interval_percent=0.1, output_file=_out("a-{Count}.jpg")))
