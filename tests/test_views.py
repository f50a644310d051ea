"""Count intervals through a slide run: tta's total is the mean of its 8 views, each view a plain run
of the transformed slide; tta stays seam-free; an ensemble counts its members' mean."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

import wsicount
from wsicount.errors import ModelError
from wsicount.models import ModelCard, build_model, save_model
from wsicount.training.calibrate import save_calibration
from wsicount.uncertainty import fit_calibration
from wsicount.views import DIHEDRAL

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MPP = 0.5


def _cal(method: str) -> dict:
    """A calibration record of ``method`` fitted on synthetic residuals (its terms, not its values, matter here)."""
    rng = np.random.default_rng(1)
    pred = rng.uniform(5, 200, 60)
    terms = {"pred": pred, "area": rng.uniform(1e3, 4e3, 60), "tta_var": 0.2 * pred, "ens_var": 0.3 * pred}
    return fit_calibration(pred + rng.normal(0, np.sqrt(pred)), pred, terms, method).to_dict()


def _model(folder, seed: int) -> str:
    """A random-weight U-Net card (fixed normalisation, so a pixel's input depends on it alone)."""
    import torch

    torch.manual_seed(seed)
    m = build_model("unet", base_filters=8).eval()
    with torch.no_grad():  # a positive output on most pixels: the ReLU head keeps a density to count
        m.head.weight.mul_(20.0)
        m.head.bias.fill_(-0.02)
    card = ModelCard(name=f"tiny{seed}", arch="unet", arch_kwargs={"in_channels": 1, "base_filters": 8}, sigma_px=2.0,
                     mpp=MPP, modality="fluorescence", normalization={"kind": "fixed", "offset": 0.0, "span": 255.0})
    return str(save_model(m, card, folder / f"tiny{seed}"))


def _slide(path, img: np.ndarray) -> str:
    """A tiled single-level TIFF of a gray image."""
    tifffile.imwrite(path, img, tile=(128, 128), compression="zlib")
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("uqrun")
    model = _model(d, 0)
    save_calibration(model, {**_cal("shared")})
    save_calibration(model, {**_cal("tta")})
    rng = np.random.default_rng(0)
    img = (rng.random((384, 320)) * 40).astype(np.uint8)  # sides multiples of the stride (8)
    yy, xx = np.mgrid[:384, :320]
    for cy, cx in rng.uniform(10, 310, (60, 2)):
        img = np.maximum(img, (200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 18)).astype(np.uint8))
    return d, model, img


def _run(d, model, img, name, **kw):
    opts = dict(mpp=MPP, tissue_mode="none", threads=1, progress=False, precision="fp32")
    return wsicount.count(_slide(d / f"{name}.tif", img), d / name, model=model, **{**opts, **kw})


def test_tta_total_is_the_mean_of_the_views_each_a_run_of_the_transformed_slide(setup):
    d, model, img = setup
    s = _run(d, model, img, "tta", uncertainty="tta", tile_size=256)
    views = np.sum([json.loads(p.read_text())["views"] for p in (d / "tta" / ".wsicount" / "tiles").glob("*.json")],
                   axis=0)
    assert views.shape == (8,) and np.ptp(views) > 2e-3 * views.mean()  # random weights: the views differ
    assert s["total_cells"] == pytest.approx(views.mean(), rel=1e-5)
    plain = []
    for k, flip in DIHEDRAL:
        t = np.rot90(img, k)
        plain.append(_run(d, model, np.ascontiguousarray(np.fliplr(t) if flip else t), f"v{k}{int(flip)}",
                          tile_size=256)["total_cells"])
    assert views == pytest.approx(plain, rel=2e-5)  # each view, in order: 100x tighter than their spread
    assert s["total_cells_ci"]["method"] == "tta"
    assert s["total_cells_ci"]["lo"] < s["total_cells"] < s["total_cells_ci"]["hi"]


def test_tta_run_is_seam_free(setup):
    d, model, img = setup
    import zarr

    runs = {ts: _run(d, model, img, f"seam{ts}", uncertainty="tta", tile_size=ts) for ts in (192, 512)}
    dens = {ts: zarr.open_array(str(d / f"seam{ts}" / "density" / "0"), mode="r")[...] for ts in runs}
    assert np.abs(dens[192] - dens[512]).max() <= 1e-4 * dens[512].max()
    assert runs[192]["total_cells"] == pytest.approx(runs[512]["total_cells"], rel=1e-5)


def test_ensemble_run_counts_the_members_mean(setup):
    d, model, img = setup
    members = [model, _model(d, 1), _model(d, 2)]
    save_calibration(model, {**_cal("ensemble"), "members": [f"tiny{i}.json" for i in range(3)]})
    s = _run(d, model, img, "ens", uncertainty="ensemble", tile_size=256)
    each = [_run(d, m, img, f"m{i}", tile_size=256)["total_cells"] for i, m in enumerate(members)]
    assert s["total_cells"] == pytest.approx(np.mean(each), rel=1e-5)
    assert s["total_cells_ci"]["method"] == "ensemble"


def test_an_uncalibrated_method_is_refused_before_any_tile(setup, tmp_path):
    d, _, img = setup
    bare = _model(tmp_path, 3)
    save_calibration(bare, _cal("shared"))
    with pytest.raises(ModelError, match="no 'tta' calibration"):
        _run(tmp_path, bare, img, "x", uncertainty="tta")
    assert not (tmp_path / "x" / "summary.json").exists()


def test_hetero_run_adds_the_heads_variance_of_the_whole_image(setup, tmp_path):
    """The slide interval under hetero uses Σ of the head's per-pixel variance, whatever the tile size."""
    from wsicount.models import load_model, read_card
    from wsicount.models.variance import VarianceHead, predict_variance, save_head
    from wsicount.uncertainty import card_calibration

    d, _, img = setup
    model = _model(tmp_path, 0)
    import torch

    torch.manual_seed(4)
    head = VarianceHead(8).eval()
    save_head(head, tmp_path / "tiny0.variance.safetensors")
    from wsicount.uncertainty import Calibration

    # the head's variance alone sets the width: a wrong or missing het sum changes the interval
    rec = Calibration("hetero", {"pred": 0.0, "area": 0.0, "pred2": 0.0, "het_var": 1e4}, 1e-9,
                      tuple(np.linspace(0.5, 2.5, 40))).to_dict()
    save_calibration(model, _cal("shared"))
    save_calibration(model, {**rec, "head": "tiny0.variance.safetensors"})
    runs = {ts: _run(tmp_path, model, img, f"h{ts}", uncertainty="hetero", tile_size=ts) for ts in (192, 512)}
    lm = load_model(model)
    dens, var = predict_variance(lm, head, img)
    cal = card_calibration(read_card(model)[0].calibration, "hetero")
    total = runs[512]["total_cells"]
    lo, hi = cal.interval(total, {"pred": max(total, 0.0), "area": float(img.size), "het_var": float(var.sum())})
    for s in runs.values():
        assert s["total_cells"] == pytest.approx(float(dens.sum()), rel=1e-4)
        assert (s["total_cells_ci"]["lo"], s["total_cells_ci"]["hi"]) == pytest.approx((lo, hi), rel=1e-4)
        assert s["total_cells_ci"]["method"] == "hetero"
    assert hi - lo > 0.01 * total


def _dataset(root, n: int = 8, size: int = 48):
    """A manifest-layout dataset of ``n`` validation images with bright blobs at the annotated points."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "points").mkdir()
    rng = np.random.default_rng(0)
    lines = ["name,count,split,um_per_px,n_points"]
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        pts = rng.uniform(5, size - 5, (int(rng.integers(1, 6)), 2)).round(1)
        img = np.full((size, size), 20.0)
        for x, y in pts:
            img += 200 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"v{i}.png")
        np.savetxt(root / "points" / f"v{i}.csv", pts, delimiter=",", header="x,y", comments="")
        lines.append(f"v{i},{len(pts)},val,{MPP},{len(pts)}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def test_calibrate_ensemble_and_hetero_records_name_their_parts(tmp_path):
    """calibrate: the ensemble's units count the members' mean; records name members / head relative to the card."""
    from wsicount.errors import InputError
    from wsicount.models import load_model
    from wsicount.models.variance import VarianceHead, save_head
    from wsicount.training.calibrate import calibrate
    from wsicount.training.data import load_dataset
    from wsicount.views import predict_views

    data = _dataset(tmp_path / "blobs")
    cards = [_model(tmp_path / "m", i) for i in range(3)]
    rec = calibrate(cards[0], data, split="val", method="ensemble", grids=(3,), members=cards)
    assert rec["members"] == ["tiny0.json", "tiny1.json", "tiny2.json"] and rec["n_units"] == 8 * 9
    models = [load_model(c) for c in cards]
    mean = sum(predict_views(models, s.image, tta=False).mean(axis=0).sum() for s in load_dataset(data))
    truth = sum(s.count for s in load_dataset(data))
    # the fitted bias is Σ(true - count) / Σ count over the units, whose counts add to the members' mean
    assert rec["bias"] == pytest.approx((truth - mean) / mean, rel=1e-3)
    save_head(VarianceHead(8), tmp_path / "h" / "head.safetensors")
    rec = calibrate(cards[0], data, split="val", method="hetero", grids=(3,), head=tmp_path / "h" / "head.safetensors")
    assert rec["head"] == "../h/head.safetensors" and rec["method"] == "hetero"
    with pytest.raises(InputError, match="ensemble"):
        calibrate(cards[0], data, split="val", method="ensemble", grids=(3,))
    with pytest.raises(InputError, match="hetero"):
        calibrate(cards[0], data, split="val", method="shared", grids=(3,), head=tmp_path / "h" / "head.safetensors")


def test_evaluate_with_a_view_method_counts_each_image_as_its_views_mean(tmp_path):
    """evaluate(uncertainty="ensemble"): each image's count is the members' mean and its interval that method's."""
    from wsicount.errors import InputError
    from wsicount.models import load_model
    from wsicount.training.data import load_dataset
    from wsicount.training.evaluate import evaluate
    from wsicount.views import predict_views

    data = _dataset(tmp_path / "blobs")
    cards = [_model(tmp_path / "m", i) for i in range(3)]
    save_calibration(cards[0], _cal("shared"))
    save_calibration(cards[0], {**_cal("ensemble"), "members": ["tiny0.json", "tiny1.json", "tiny2.json"]})
    res = evaluate(cards[0], data, split="val", precision="fp32", uncertainty="ensemble")
    models = [load_model(c) for c in cards]
    want = [float(predict_views(models, s.image, tta=False).mean(axis=0).sum()) for s in load_dataset(data, "val")]
    assert [r.pred for r in res.images] == pytest.approx(want, rel=1e-5)
    assert res.metrics["interval_method"] == "ensemble"
    assert all(r.lo <= r.pred <= r.hi for r in res.images)
    plain = evaluate(cards[0], data, split="val", precision="fp32")
    assert plain.metrics["interval_method"] == "shared"
    assert [r.pred for r in plain.images] != pytest.approx(want, rel=1e-3)  # the card's own model alone differs
    with pytest.raises(InputError, match="context"):
        evaluate(cards[0], data, split="val", uncertainty="ensemble", context="background")


def test_mcdropout_passes_are_fixed_subnetworks_of_the_whole_slide(setup, tmp_path):
    """Each MC-dropout pass of a run counts what its sub-network counts on the whole image, at any tile size."""
    from wsicount.models import load_model
    from wsicount.uncertainty import Calibration
    from wsicount.views import mc_members, predict_views

    _, _, img = setup
    model = _model(tmp_path, 0)
    save_calibration(model, _cal("shared"))
    rec = Calibration("mcdropout", {"pred": 0.5, "area": 0.0, "pred2": 0.0, "mc_var": 1.0}, 1e-9,
                      tuple(np.linspace(0.5, 2.5, 40))).to_dict()
    save_calibration(model, {**rec, "p": 0.3, "passes": 4})
    subs = mc_members(load_model(model), 0.3, 4)
    whole = predict_views(subs, img, tta=False).sum(axis=(1, 2), dtype=np.float64)
    assert np.ptp(whole) > 1e-3 * whole.mean()  # the masks differ, so do the passes
    for ts in (192, 512):
        s = _run(tmp_path, model, img, f"mc{ts}", uncertainty="mcdropout", tile_size=ts)
        views = np.sum([json.loads(p.read_text())["views"] for p in (tmp_path / f"mc{ts}" / ".wsicount" / "tiles").glob("*.json")],
                       axis=0)
        assert views == pytest.approx(whole, rel=1e-4)
        assert s["total_cells"] == pytest.approx(whole.mean(), rel=1e-4)
        assert s["total_cells_ci"]["method"] == "mcdropout"
