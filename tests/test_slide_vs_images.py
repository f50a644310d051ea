"""A slide is counted as its images are: ``wsicount.count`` on a mosaic of images vs ``wsicount evaluate`` on each.

The images get different brightnesses and black gaps between them and are written through
the real writers; each image's box is counted with a rim of the receptive radius r, and the
gaps (> 2r) keep boxes independent (``benchmarks/slide_vs_images.py``). Asserted:

- the slide's total within 2 % of the sum of ``evaluate``'s per-image predictions, in both
  framings (each image alone, as trained; and ``--context background``, on the slide background);
- every box within 3 % of ``evaluate --context background`` for boxes of >= 20 cells, and within
  1 cell for smaller ones (where 3 % is less than a cell). What remains between the two is the
  normalisation field's binning (a quarter grey level) and the tissue mask cutting the rim's
  density: each image's statistics are its own pixels', and cover the black nearest to it.

The images evaluated are the pixels the slide holds: on a JPEG slide (NDPI) each box read back
on the model grid. JPEG q95 itself moves the network's count of a box by up to ~10 % (+1.3 % in
total on the 76 TRP1 images at x4): the model's sensitivity to compression artefacts, which the
benchmark reports against the original pixels too.

Per box against the lone-image framing, for a model trained only on crops inside its images
(melanocyte-trp1) only the total is asserted: its card's normalisation floor shows the black
around an image to the network as the zero it pads with, which makes the input layer agree
exactly, but deeper layers still pad their own features with zeros alone and see the
response to black on a slide (on all 76 real TRP1 images at x1, 64 of 65 boxes of >= 20 cells
within 3 %, the worst 3.5 %; BENCHMARKS.md). vgg-cells, trained with crops framed by black,
holds per box in both framings. Real TRP1 images
(skipped without ../shared/data), and synthetic fluorescence fields that need no data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _compare(*args, **kwargs) -> dict:
    sys.path.insert(0, str(ROOT))
    from benchmarks.slide_vs_images import compare

    return compare(*args, **kwargs)


def _check(r: dict, alone: float = 0.02, boxes_alone: bool = False) -> None:
    """Totals within 2 % (``alone``: the lone-image framing); boxes within 3 % (>= 20 cells) or 1 cell of the reference,
    and of the lone-image framing too with ``boxes_alone`` (a model trained on images framed by background)."""
    assert r["gap"] > 2 * r["rim"]  # boxes are independent
    ref = r["reference"]  # evaluate --context background on the pixels the slide holds
    for c, bar in ((ref, 0.02), (ref.replace("background", "none"), alone)):
        assert r[c]["total"] > 20
        assert abs(r["slide_total"] / r[c]["total"] - 1) <= bar, (c, r[c])
        assert abs(r[c]["total_rel"]) <= bar, (c, r[c])  # the boxes hold the slide's density
    for b in r["boxes"]:
        for c in (ref, ref.replace("background", "none")) if boxes_alone else (ref,):
            assert abs(b["slide"] - b[c]) <= max(0.03 * b[c], 1.0), (c, b)


@pytest.mark.skipif(not (DATA / "trp1").exists(), reason=f"TRP1 images not found at {DATA / 'trp1'}")
@pytest.mark.parametrize("upsample,fmt", [(4, "ndpi"), (1, "ome-tiff")])
def test_trp1_mosaic_counts_as_its_images(tmp_path, one_torch_thread, upsample, fmt):
    """Six TRP1 images, 4x dimmer to 1x, black gaps, x4 NDPI (JPEG) and x1 lossless OME-TIFF."""
    _check(_compare(DATA / "trp1", "melanocyte-trp1", upsample, fmt, tmp_path, n=6, own=False))


@pytest.mark.skipif(not (DATA / "vgg_cells").exists(), reason=f"VGG images not found at {DATA / 'vgg_cells'}")
def test_vgg_mosaic_counts_as_its_images(tmp_path, one_torch_thread):
    """Six VGG test images (SIMCEP: vignetted borders, blue signal), 4x dimmer to 1x, x1 lossless OME-TIFF.

    vgg-cells was trained with half its crops framed by black, so each box also holds against
    the image alone (zero padding), not only against the image on the slide background.
    """
    r = _compare(DATA / "vgg_cells", "vgg-cells", 1, "ome-tiff", tmp_path, split="test", n=6, own=False)
    _check(r, boxes_alone=True)


@pytest.mark.skipif(not (DATA / "vgg_cells").exists(), reason=f"VGG images not found at {DATA / 'vgg_cells'}")
def test_vgg_mosaic_counts_as_its_images_with_the_ensemble(tmp_path, one_torch_thread):
    """The card's calibrated ensemble counts the slide as it counts each image: the mean of its members' densities.

    Views count each image alone (``evaluate``'s plain framing), so that is the reference per box.
    """
    r = _compare(DATA / "vgg_cells", "vgg-cells", 1, "ome-tiff", tmp_path, split="test", n=6, own=False,
                 uncertainty="ensemble")
    assert r["uncertainty"] == "ensemble" and r["reference"] == "none"
    _check(r, boxes_alone=True)


def test_synthetic_mosaic_counts_as_its_images(tmp_path, one_torch_thread):
    """Synthetic fluorescence fields (tissue throughout, cells of the default model's kind) at the model's scale."""
    from PIL import Image

    from wsicount.synth import synth_array

    mpp = 1.8092
    img, _ = synth_array((768, 768), seed=5, look="fluorescence", mpp=mpp, cell_density_per_mm2=400.0,
                         tissue="disk", tissue_fraction=0.8)
    data = tmp_path / "fields"
    (data / "images").mkdir(parents=True)
    (data / "points").mkdir()
    rows = ["name,count,split,um_per_px,n_points"]
    for i, (y, x) in enumerate([(128, 128), (128, 384), (384, 128), (384, 384)]):
        Image.fromarray(np.ascontiguousarray(img[y : y + 256, x : x + 256, 1])).save(data / "images" / f"f{i}.png")
        (data / "points" / f"f{i}.csv").write_text("x,y\n")
        rows.append(f"f{i},0,test,{mpp},0")
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    r = _compare(data, "melanocyte-trp1", 2, "ome-tiff", tmp_path / "work", dim=0.3)
    # normalisation parity: the slide equals the slide normalised by each field's own statistics
    assert abs(r["own"]["total_rel"]) <= 0.005 and r["own"]["big_rel_max"] <= 0.01, r["own"]
    # the lone-image framing: the network answers black around these fields +2.5 % (every box alike)
    # against the zero padding around a field alone; the 2 % bar on it holds on real TRP1 images above
    _check(r, alone=0.03)
