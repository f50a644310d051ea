"""Synthetic embryos: truth consistency, reproducibility, every written format reads back."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest

from wsicount.synth.embryo import HARD, EmbryoParams, embryo_geometry, render_embryo, synth_embryo
from wsicount.timelapse.stack import open_stack

SMALL = EmbryoParams(size=200, mpp=1.25, n_frames=24, n_planes=2, start_h=22.0, end_h=60.0)


def test_truth_is_consistent():
    truth, others = embryo_geometry(replace(SMALL, n_frames=80), seed=4)
    assert np.all(np.diff(truth.counts) >= 0) and truth.counts[0] == 1 and truth.counts[-1] == 8
    for t, cells in enumerate(truth.cells):
        assert len(cells) == truth.counts[t] == 1 + sum(d <= truth.times_h[t] for d in truth.division_times_h)
        assert np.all(cells[:, 2] >= cells[:, 3])  # a >= b
    # daughters are smaller: an 8-cell blastomere has about 1/8 of the zygote's area
    a0 = np.pi * truth.cells[0][:, 2] * truth.cells[0][:, 3]
    a8 = np.pi * truth.cells[-1][:, 2] * truth.cells[-1][:, 3]
    assert 0.05 < a8.mean() / a0[0] < 0.25
    for name, n in (("t2", 2), ("t4", 4), ("t8", 8)):
        f = truth.cleavage_frames[name]
        assert truth.counts[f] >= n and (f == 0 or truth.counts[f - 1] < n)
    assert len(others[-1]) >= SMALL.polar_bodies


def test_render_is_reproducible_and_shaped():
    a, ta = render_embryo(replace(SMALL, n_frames=4), seed=1)
    b, tb = render_embryo(replace(SMALL, n_frames=4), seed=1)
    c, _ = render_embryo(replace(SMALL, n_frames=4), seed=2)
    assert a.shape == (4, 2, 1, 200, 200) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(ta.counts, tb.counts)
    hard, _ = render_embryo(replace(SMALL, n_frames=4, **HARD), seed=1)
    # dimmer: less contrast in the embryo's centre than the default look
    ctr = slice(60, 140)
    assert hard[:, :, 0, ctr, ctr].std() < a[:, :, 0, ctr, ctr].std() * 1.5


@pytest.mark.parametrize("fmt", ["ome-tiff", "tiff", "ome-zarr", "frames"])
def test_each_format_reads_back_with_times(tmp_path, fmt):
    name = {"ome-tiff": "e.ome.tif", "tiff": "e.tif", "ome-zarr": "e.ome.zarr", "frames": "e"}[fmt]
    truth = synth_embryo(tmp_path / name, format=fmt, params=replace(SMALL, n_frames=6), seed=3)
    st = open_stack(tmp_path / name)
    assert st.data.shape == (6, 2, 1, 200, 200)
    offset = truth.times_h[0] if fmt == "tiff" else 0.0  # ImageJ keeps only the interval: starts at 0
    assert np.allclose(st.times_h + offset, truth.times_h, atol=1e-3)
    if fmt == "frames":
        assert st.plane_names == ["F-15", "F15"]
    else:
        assert st.mpp == pytest.approx(1.25)
    meta = json.loads((tmp_path / f"{name}.truth.json").read_text())
    assert meta["counts"] == truth.counts.tolist() and meta["cleavage_frames"] == truth.cleavage_frames
    with open(tmp_path / f"{name}.cells.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == int(truth.counts.sum())


def test_cli_writes_an_embryo_stack(tmp_path):
    from click.testing import CliRunner

    from wsicount.cli import cli

    r = CliRunner().invoke(cli, ["synth", str(tmp_path / "w"), "--look", "embryo", "--format", "frames",
                                 "--frames", "3", "--planes", "1", "--size", "160", "160"])
    assert r.exit_code == 0, r.output
    st = open_stack(tmp_path / "w")
    assert st.data.shape == (3, 1, 1, 160, 160) and st.time_source == "csv"
    bad = CliRunner().invoke(cli, ["synth", str(tmp_path / "x.ndpi"), "--look", "embryo", "--format", "ndpi"])
    assert bad.exit_code == 2 and "embryo stack" in bad.output
