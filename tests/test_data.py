"""Dataset loaders (manifest layout, VGG dot pairs) and augmentation consistency."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from wsicount.training.data import Augmenter, _dihedral_points, dihedral, load_dataset, load_vgg_dots

H, W = 24, 40  # non-square so that row/column mix-ups show


def _dot_image(pts: np.ndarray, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    """(1, H, W) image with a distinct value at each integer (x, y) point."""
    img = np.zeros((1, *shape), np.float32)
    for i, (x, y) in enumerate(pts.astype(int)):
        img[0, y, x] = i + 1
    return img


POINTS = np.array([[0.0, 0.0], [39.0, 0.0], [3.0, 20.0], [25.0, 7.0], [39.0, 23.0]])


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("flip", [False, True])
def test_dihedral_moves_points_with_pixels(k, flip):
    img = dihedral(_dot_image(POINTS), k, flip)
    pts = _dihedral_points(POINTS, (H, W), k, flip)
    assert img.shape[-2:] == ((W, H) if k % 2 else (H, W))
    for i, (x, y) in enumerate(pts):
        assert img[0, int(y), int(x)] == i + 1


def _augment(seed: int, **kw) -> tuple[np.ndarray, np.ndarray]:
    """Augment the dot image with a fresh seeded Augmenter."""
    return Augmenter(seed=seed, **kw)(_dot_image(POINTS), POINTS)


def test_augmentation_is_seed_reproducible():
    runs = [[_augment(7, p_rotate=0.5, p_blur=0.5) for _ in range(2)] for _ in range(2)]
    a, b = runs
    for (xa, pa), (xb, pb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(pa, pb)
    outs = [_augment(s)[1] for s in range(8)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])  # other seeds differ


def test_augmenter_draws_differ_between_calls():
    aug = Augmenter(seed=1, p_rotate=0.0, p_blur=0.0)
    draws = [aug(_dot_image(POINTS), POINTS)[1] for _ in range(8)]
    assert len({d.tobytes() for d in draws}) > 1


@pytest.mark.parametrize("seed", range(6))
def test_exact_augmentation_keeps_points_on_their_pixels(seed):
    """Without free rotation and blur, each point still sits on its own (affinely scaled) dot."""
    x, pts = _augment(seed, p_rotate=0.0, p_blur=0.0)
    background = np.median(x)
    vals = [x[0, int(y), int(xx)] for xx, y in pts]
    # the brightness/contrast jitter is affine with positive gain: dot order is kept
    assert all(v > background for v in vals)
    assert np.all(np.diff(vals) > 0)


def test_free_rotation_keeps_points_on_blobs():
    """With a free rotation, each point lands on the maximum of its (rotated) blob."""
    pts = np.array([[8.0, 6.0], [30.0, 17.0], [20.0, 12.0], [33.0, 5.0]])
    yy, xx = np.mgrid[:H, :W]
    img = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2)) for x, y in pts)[None].astype(np.float32)
    checked = 0
    for seed in range(4):
        xr, pr = Augmenter(seed=seed, p_rotate=1.0, p_blur=0.0)(img, pts)
        for x, y in pr:
            if not (2 <= x <= xr.shape[-1] - 3 and 2 <= y <= xr.shape[-2] - 3):
                continue  # rotated close to or out of the frame
            checked += 1
            win = xr[0, int(round(y)) - 2 : int(round(y)) + 3, int(round(x)) - 2 : int(round(x)) + 3]
            cy, cx = np.unravel_index(win.argmax(), win.shape)
            assert abs(cy - 2) <= 1 and abs(cx - 2) <= 1
    assert checked >= 8


def _write_manifest_dataset(root, rows):
    """Write images/, points/ and manifest.csv for rows of (name, image, points, count, split, mpp)."""
    (root / "images").mkdir(parents=True)
    (root / "points").mkdir()
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "count", "split", "um_per_px", "n_points"])
        for name, img, pts, count, split, mpp in rows:
            Image.fromarray(img).save(root / "images" / f"{name}.png")
            np.savetxt(root / "points" / f"{name}.csv", pts, delimiter=",", header="x,y", comments="", fmt="%.2f")
            w.writerow([name, count, split, "" if mpp is None else mpp, len(pts)])


def test_manifest_loader_reads_layout_and_splits(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (H, W), dtype=np.uint8)
    rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    rows = [
        ("a", gray, np.array([[1.5, 2.0], [30.0, 20.0]]), 2, "train", 1.81),
        ("b", rgb, np.array([[5.0, 5.0]]), 3, "test", None),
        ("c", gray, np.zeros((0, 2)), 0, "test", 0.5),
    ]
    _write_manifest_dataset(tmp_path, rows)
    all_ = load_dataset(tmp_path)
    assert [s.name for s in all_] == ["a", "b", "c"]
    a, b, c = all_
    np.testing.assert_array_equal(a.image, gray)
    np.testing.assert_array_equal(b.image, rgb)
    np.testing.assert_allclose(a.points, [[1.5, 2.0], [30.0, 20.0]])
    assert (a.count, a.split, a.mpp) == (2.0, "train", 1.81)
    assert b.mpp is None and b.point_weight == 3.0  # 3 cells, 1 approximate point
    assert c.points.shape == (0, 2) and c.point_weight == 0.0
    assert [s.name for s in load_dataset(tmp_path, split="test")] == ["b", "c"]
    assert load_dataset(tmp_path, split="val") == []


def test_manifest_loader_reports_missing_image(tmp_path):
    _write_manifest_dataset(tmp_path, [("a", np.zeros((H, W), np.uint8), np.zeros((0, 2)), 0, "train", None)])
    (tmp_path / "images" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match="'a'"):
        load_dataset(tmp_path)


def test_folder_without_annotations_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path)


def _write_vgg_pair(folder, stem: str, pts: list[tuple[int, int]]) -> None:
    """Write ``STEMcell.png`` and ``STEMdots.png`` (red pixels at the (x, y) points)."""
    img = np.full((H, W, 3), 30, np.uint8)
    dots = np.zeros((H, W, 3), np.uint8)
    for x, y in pts:
        dots[y, x] = (255, 0, 0)
    dots[0, 0] = (255, 255, 255)  # a white pixel is not a dot
    Image.fromarray(img).save(folder / f"{stem}cell.png")
    Image.fromarray(dots).save(folder / f"{stem}dots.png")


def test_vgg_dots_loader(tmp_path):
    _write_vgg_pair(tmp_path, "001", [(3, 4), (39, 23)])
    _write_vgg_pair(tmp_path, "002", [(10, 0)])
    _write_vgg_pair(tmp_path, "003", [])
    samples = load_vgg_dots(tmp_path, n_train=2)
    expected = [("001", "train", 2.0), ("002", "train", 1.0), ("003", "test", 0.0)]
    assert [(s.name, s.split, s.count) for s in samples] == expected
    assert sorted(map(tuple, samples[0].points)) == [(3.0, 4.0), (39.0, 23.0)]  # (x, y)
    assert samples[0].image.shape == (H, W, 3) and samples[0].mpp is None
    # a folder of dot pairs without a manifest is recognised by load_dataset too
    assert [s.name for s in load_dataset(tmp_path)] == ["001", "002", "003"]



def test_scale_jitter_moves_points_with_the_pixels():
    """A rescaled image keeps its cells: each point stays on its bright pixel, none is lost."""
    from wsicount.training.data import Augmenter

    x = np.zeros((1, 64, 64), np.float32)
    pts = np.array([[10.0, 20.0], [40.0, 50.0], [33.0, 7.0]])
    for px, py in pts:
        x[0, int(py) - 1 : int(py) + 2, int(px) - 1 : int(px) + 2] = 1.0
    aug = Augmenter(seed=0, p_rotate=0.0, p_blur=0.0, brightness=0.0, contrast=0.0, scale=(0.5, 2.0), min_size=16)
    for _ in range(6):
        xa, pa = aug(x, pts)
        assert len(pa) == 3
        for px, py in pa:
            r, c = int(round(py)), int(round(px))
            assert xa[0, r, c] > 0.5 * xa.max()


def test_channel_gain_scales_channels_apart_and_only_when_asked():
    x = np.ones((3, 32, 32), np.float32)
    pts = np.zeros((0, 2))
    plain = Augmenter(seed=3, p_blur=0.0, p_rotate=0.0)(x, pts)[0]
    assert np.allclose(plain[0], plain[1]) and np.allclose(plain[1], plain[2])  # one gain for all channels
    stained = Augmenter(seed=3, p_blur=0.0, p_rotate=0.0, brightness=0.0, channel_gain=0.3)(x, pts)[0]
    means = stained.reshape(3, -1).mean(1)
    assert np.ptp(means) > 1e-3 and np.all(means > np.exp(-0.3 - 0.3) - 1e-6)


def test_points_with_ellipse_columns_are_read_in_radians_and_checked(tmp_path):
    from wsicount.errors import InputError
    from wsicount.training.data import read_annotations

    p = tmp_path / "a.csv"
    p.write_text("x,y,a,b,angle\n1.5,2,6,3,90\n10,11,4,4,\n")
    pts, ell = read_annotations(p)
    assert np.allclose(pts, [[1.5, 2.0], [10.0, 11.0]])
    assert np.allclose(ell, [[6.0, 3.0, np.pi / 2], [4.0, 4.0, 0.0]])
    p.write_text("x,y,a,b\n1,2,6,3\n")  # angle column absent: 0
    assert np.allclose(read_annotations(p)[1], [[6.0, 3.0, 0.0]])
    p.write_text("x,y\n1,2\n")
    assert read_annotations(p)[1] is None
    p.write_text("x,y,a,b,angle\n1,2,6,3,0\n3,4,,2,0\n")
    with pytest.raises(InputError, match="line 3"):
        read_annotations(p)
    p.write_text("x,y,a,b,angle\n1,2,0,3,0\n")
    with pytest.raises(InputError, match="semi-axes"):
        read_annotations(p)


def test_resampling_moves_points_and_axes_with_the_pixels():
    from wsicount.training.data import Sample, resample_samples

    img = np.zeros((40, 60), np.uint8)
    img[10, 20] = 255
    s = Sample("a", img, np.array([[20.0, 10.0]]), 1.0, "train", 0.5, np.array([[8.0, 4.0, 0.3]]))
    (r,) = resample_samples([s], 1.0)
    assert r.image.shape == (20, 30) and r.mpp == 1.0 and r.count == 1.0
    assert np.allclose(r.points, [[9.75, 4.75]]) and np.allclose(r.ellipses, [[4.0, 2.0, 0.3]])
    yy, xx = np.nonzero(r.image)
    assert abs(np.average(xx, weights=r.image[yy, xx]) - 9.75) < 0.6
    assert resample_samples([replace(s, mpp=None)], 1.0)[0].image is img  # no pixel size: kept as it is


def test_framed_crops_show_background_without_cells_and_keep_every_cell():
    """make_batch with frame=1: crops reach into the background, which holds the background level and no target mass."""
    from wsicount.training.data import Sample, make_batch, on_background

    rng = np.random.default_rng(0)
    pts = rng.uniform(4, 27, (12, 2))
    x = np.full((1, 32, 32), 0.5, np.float32)
    s = Sample("a", x[0], pts, 12.0, "train", None)
    framed, fs = on_background(x, s, 16, -0.25)
    assert framed.shape == (1, 64, 64) and np.allclose(fs.points, pts + 16)
    assert (framed[0, :16] == -0.25).all() and (framed[0, 16:48, 16:48] == 0.5).all()
    aug = Augmenter(seed=1, p_rotate=0.0, p_blur=0.0, brightness=0.0, contrast=0.0)
    xb, yb = make_batch([(x, s)] * 16, aug, (32, 32), 1.5, 1.0, frame=1.0, background={"a": -0.25})
    assert xb.shape == (16, 1, 32, 32) and yb.shape == (16, 1, 32, 32)
    bg = xb[:, 0] == np.float32(-0.25)
    assert bg.any() and (~bg).any()  # crops straddle an image edge
    inner = ~ndimage.binary_dilation(~bg, np.ones((1, 3, 3), bool), iterations=6)  # > 4 sigma from the image
    assert inner.any() and np.abs(yb[:, 0][inner]).max() < 1e-6
    whole = make_batch([(x, s)], Augmenter(seed=2, p_rotate=0.0, p_blur=0.0, brightness=0.0, contrast=0.0),
                       (64, 64), 1.5, 1.0, frame=1.0, background={"a": -0.25})[1]
    assert whole.sum() == pytest.approx(12.0, rel=1e-3)  # the framed image's crop holds every cell's mass
