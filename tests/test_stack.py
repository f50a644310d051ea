"""Each stack kind round-trips through the real writers: frames, times, focal planes, channels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsicount.errors import FrameReadError, InputError
from wsicount.timelapse.stack import is_stack, open_stack
from wsicount.timelapse.write import write_frames, write_ome_zarr, write_tiff_stack

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _stack(t: int = 5, z: int = 2, c: int = 1, h: int = 24, w: int = 32) -> np.ndarray:
    """A stack whose every plane is distinguishable: value = 10 t + 3 z + c plus a gradient."""
    tt, zz, cc, yy, xx = np.meshgrid(*(np.arange(k) for k in (t, z, c, h, w)), indexing="ij")
    return (10 * tt + 3 * zz + cc + (yy + xx) % 3).astype(np.uint8)


TIMES = np.array([0.0, 0.25, 0.5, 0.75, 1.0]) + 20.0


@pytest.mark.parametrize("ome", [True, False])
def test_tiff_round_trip(tmp_path, ome):
    a = _stack(c=2)
    p = write_tiff_stack(tmp_path / ("s.ome.tif" if ome else "s.tif"), a, TIMES, mpp=0.5, ome=ome)
    st = open_stack(p)
    assert st.data.dims == ("t", "z", "c", "y", "x") and st.data.shape == a.shape
    assert st.kind == ("ome-tiff" if ome else "tiff")
    assert np.array_equal(st.read_frame(3), a[3])
    assert np.array_equal(st.data.isel(t=4, z=1).values, a[4, 1])
    assert st.mpp == pytest.approx(0.5)
    if ome:  # absolute times per plane
        assert st.time_source == "ome" and np.allclose(st.times_h, TIMES)
    else:  # ImageJ keeps only the interval
        assert st.time_source == "imagej" and np.allclose(st.times_h, TIMES - 20.0)
    assert is_stack(p)


def test_plain_multipage_tiff_pages_are_frames(tmp_path):
    import tifffile

    a = _stack(t=4, z=1)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tw:
        for i in range(4):
            tw.write(a[i, 0, 0], metadata=None)
    st = open_stack(tmp_path / "pages.tif", frame_interval_min=15)
    assert st.data.shape == (4, 1, 1, 24, 32)
    assert np.array_equal(st.read_frame(2)[0, 0], a[2, 0, 0])
    assert st.time_source == "interval" and np.allclose(st.times_h, [0, 0.25, 0.5, 0.75])
    assert np.isnan(open_stack(tmp_path / "pages.tif").times_h).all()


def test_ome_zarr_round_trip(tmp_path):
    a = _stack(c=3)
    write_ome_zarr(tmp_path / "s.ome.zarr", a, TIMES, mpp=0.5)
    st = open_stack(tmp_path / "s.ome.zarr")
    assert st.kind == "ome-zarr" and st.data.shape == a.shape
    assert np.array_equal(st.read_frame(1), a[1])
    assert st.time_source == "ngff" and np.allclose(st.times_h, TIMES)
    assert st.mpp == pytest.approx(0.5) and is_stack(tmp_path / "s.ome.zarr")


def test_ome_zarr_without_z_or_c(tmp_path):
    a = _stack(z=1)[:, 0, 0]
    write_ome_zarr(tmp_path / "tyx.ome.zarr", a, TIMES, axes="tyx")
    st = open_stack(tmp_path / "tyx.ome.zarr")
    assert st.data.shape == (5, 1, 1, 24, 32) and np.array_equal(st.read_frame(4)[0, 0], a[4])


def test_frames_folder_with_planes_round_trip(tmp_path):
    a = _stack(z=3)
    d = write_frames(tmp_path / "emb", a, TIMES, fmt="png", plane_names=["F-15", "F0", "F15"])
    st = open_stack(d)
    assert st.kind == "frames" and st.data.shape == a.shape
    assert st.plane_names == ["F-15", "F0", "F15"]
    assert np.array_equal(st.read_frame(2), a[2])
    assert st.time_source == "csv" and np.allclose(st.times_h, TIMES)
    assert is_stack(d)


def test_frames_times_from_names_then_interval(tmp_path):
    a = _stack(z=1)
    d = write_frames(tmp_path / "named", a, TIMES, fmt="png", times_csv=False)
    st = open_stack(d, frame_interval_min=99)
    assert st.time_source == "filename" and np.allclose(st.times_h, TIMES)
    for i, f in enumerate(sorted((d).iterdir())):
        f.rename(d / f"img{i}.png")
    st = open_stack(d, frame_interval_min=10)
    assert st.time_source == "interval" and np.allclose(st.times_h, np.arange(5) / 6)


def test_frames_times_from_exif(tmp_path):
    from PIL import Image

    d = tmp_path / "exif"
    d.mkdir()
    for i, stamp in enumerate(["2026:01:02 10:00:00", "2026:01:02 10:20:00", "2026:01:02 11:00:00"]):
        ex = Image.Exif()
        ex[0x0132] = stamp
        Image.fromarray(np.full((8, 8), i * 40, np.uint8)).save(d / f"shot{i}.jpg", exif=ex)
    st = open_stack(d)
    assert st.time_source == "exif" and np.allclose(st.times_h, [0, 1 / 3, 1])


def test_jpeg_frames_rgb(tmp_path):
    a = np.repeat(_stack(z=1) * 5, 3, axis=2)
    d = write_frames(tmp_path / "rgb", a, TIMES, fmt="jpg", quality=95)
    st = open_stack(d)
    assert st.data.shape == (5, 1, 3, 24, 32)
    assert np.abs(st.read_frame(0).astype(int) - a[0]).max() < 12  # JPEG is lossy


def test_corrupt_frame_is_named_and_others_read(tmp_path):
    a = _stack(z=1)
    d = write_frames(tmp_path / "bad", a, TIMES, fmt="jpg")
    victim = sorted(d.glob("*.jpg"))[2]
    victim.write_bytes(victim.read_bytes()[:200])
    st = open_stack(d)
    with pytest.raises(FrameReadError, match=victim.name) as e:
        st.read_frame(2)
    assert e.value.frame == 2
    for t in (0, 1, 3, 4):
        assert st.read_frame(t).shape == (1, 1, 24, 32)


def test_real_ome_tiff_time_series():
    p = DATA / "slides" / "4D-series.ome.tiff"
    if not p.exists():
        pytest.skip(f"real OME-TIFF time series not found at {p}")
    st = open_stack(p)
    assert st.data.sizes["t"] == 7 and st.data.sizes["z"] == 5 and st.kind == "ome-tiff"
    assert st.read_frame(6).shape == (5, 1, 167, 439)
    assert st.mpp is None and st.time_source == "none"
    svs = DATA / "slides" / "CMU-1-Small-Region.svs"
    assert is_stack(p) and (not svs.exists() or not is_stack(svs))  # a single-plane slide is not a stack


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError):
        open_stack(tmp_path / "missing.tif")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError):
        open_stack(tmp_path / "empty")
    assert not is_stack(tmp_path / "empty")
