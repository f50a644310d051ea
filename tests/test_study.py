"""The study table of many stacks: one row per embryo, failures recorded, columns t2..t8."""

from __future__ import annotations

import csv
from dataclasses import replace

import torch

from wsicount.models import ModelCard, load_model, save_model
from wsicount.models.cellnet import cellnet
from wsicount.synth.embryo import EmbryoParams, synth_embryo
from wsicount.timelapse.study import STUDY_COLUMNS, count_stacks, study_row


def test_study_rows_and_failures(tmp_path):
    torch.manual_seed(0)
    net = cellnet(in_channels=1, width=8)
    card = ModelCard(name="tiny", arch="cellnet", arch_kwargs={"in_channels": 1, "width": 8}, sigma_px=3.0,
                     stride=8, receptive_radius=net.receptive_radius)
    model = load_model(save_model(net, card, tmp_path / "m" / "tiny", half=False))
    p = EmbryoParams(size=64, mpp=3.0, n_frames=4, n_planes=1)
    synth_embryo(tmp_path / "e1.ome.tif", format="ome-tiff", params=p, seed=1)
    synth_embryo(tmp_path / "e2", format="frames", params=replace(p, well=2), seed=2)
    rows = count_stacks([tmp_path / "e1.ome.tif", tmp_path / "e2", tmp_path / "missing.tif"], tmp_path / "study", model)
    assert [r["embryo"] for r in rows] == ["e1", "e2", "missing"]
    assert [r["status"] for r in rows] == ["ok", "ok", "error"] and "no such file" in rows[2]["error"]
    with open(tmp_path / "study" / "study_timelapse.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == STUDY_COLUMNS and len(table) == 3
    assert (tmp_path / "study" / "e1" / "timeline.csv").exists()


def test_study_row_from_summary():
    summary = {"frames": 10, "unreadable_frames": [{"frame": 3, "error": "x"}],
               "cleavage": {"hours": {"t2": 25.0, "t3": 36.5, "t4": 37.0, "t5": None, "t8": None},
                            "frames": {"t2": 2, "t3": 5, "t4": 6, "t5": None, "t8": None},
                            "durations_h": {"cc2": 11.5, "s2": 0.5}, "censored_at_first_frame": []}}
    r = study_row("E7", summary)
    assert r["t2_h"] == "25.000" and r["t5_h"] == "" and r["cc2_h"] == "11.500" and r["t4_frame"] == 6
    assert r["unreadable_frames"] == 1 and r["status"] == "ok" and r["doubling_time_h"] == ""
    summary["growth"] = {"field": {"doubling_time_h": 12.25, "ci_h": [10.0, 15.5]}}
    r = study_row("W3", summary)
    assert (r["doubling_time_h"], r["doubling_time_lo_h"], r["doubling_time_hi_h"]) == ("12.250", "10.000", "15.500")
    series = {"frames": 4, "failed_frames": [], "growth": summary["growth"]}  # a whole-slide series: no stages
    r = study_row("W4", series)
    assert r["status"] == "ok" and r["t2_h"] == "" and r["doubling_time_h"] == "12.250"
