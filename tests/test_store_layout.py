"""The output folder is wsicount's only where wsicount wrote it: ``--overwrite`` and the clearing
of a failed run remove only the layout's own paths, a folder holding anything else is refused
(without advice to overwrite it), and a run that finished no tile binds no later run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import wsicount
from wsicount.batch import batch
from wsicount.errors import OutputError
from wsicount.store import Layout, RunState, TileRecord
from wsicount.store.records import differences
from wsicount.synth import synth_slide

FINGERPRINT = {"slide": {"name": "a.ndpi", "size": 1, "sha256_head_tail": "x"},
               "model": {"name": "m", "version": "1", "path": "m.json"},
               "params": {"tile_size": 512, "precision": "fp32", "mpp": None}, "wsicount": "0"}


def _snapshot(root: Path) -> dict[str, str]:
    """Hash of every file under ``root`` by relative path (folders as '/')."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
            for p in sorted(root.rglob("*"))}


def _fake_run(out: Path, grid: str = "100") -> None:
    """The files a finished run writes (contents do not matter to the layout)."""
    for rel in ("density/.zgroup", "density/.zattrs", "density/0/.zarray", "density/0/0.0", "density/0/1.0",
                "density/1/.zarray", "density/1/0.0", "labels/.zattrs", "labels/tissue/0/.zarray",
                "labels/tissue/0/0.0", f"counts_{grid}um/0/.zarray", f"counts_{grid}um/0/0.0",
                f"tissue_{grid}um/0/c/0/0", ".zgroup", ".zattrs", "summary.json", "regions.csv", "cells.csv",
                "cells.geojson", "report.html", "thumbnail.png", ".summary.json.k2j4.tmp.json",
                ".wsicount/run.json", ".wsicount/tiles/0_0.json"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("x")


def test_layout_finds_nothing_foreign_in_a_run_of_any_grid(tmp_path: Path) -> None:
    _fake_run(tmp_path, grid="12.5")
    assert Layout(tmp_path).foreign() == []


@pytest.mark.parametrize("rel", ["important.txt", "sub/notes.md", "density/notes.txt", "density/0/mine.csv",
                                 "labels/tissue/old/x.png", "counts_100um/0/README", "summary.json/x",
                                 "density_backup/0/0.0", ".hidden", "timeline.csv"])
def test_layout_lists_user_entries(tmp_path: Path, rel: str) -> None:
    _fake_run(tmp_path)
    if rel.startswith("summary.json/"):  # a folder where a run writes a file
        (tmp_path / "summary.json").unlink()
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text("precious")
    found = Layout(tmp_path).foreign()
    top = rel.split("/")[0]
    assert found and all(f == top or f.startswith(top + "/") for f in found), found


def test_a_symlink_is_never_ours(tmp_path: Path) -> None:
    _fake_run(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "density" / "2")
    assert Layout(tmp_path).foreign() == ["density/2", "elsewhere"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_user_folder_is_refused_and_left_untouched(tmp_path: Path, overwrite: bool) -> None:
    (tmp_path / "important.txt").write_text("precious")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.md").write_text("notes")
    before = _snapshot(tmp_path)
    with pytest.raises(OutputError, match="did not write") as e:
        RunState(tmp_path).prepare(FINGERPRINT, overwrite=overwrite)
    assert "important.txt" in str(e.value) and "sub" in str(e.value)
    assert "--overwrite" not in str(e.value)
    assert _snapshot(tmp_path) == before  # no lock, no state folder, nothing removed


def test_overwrite_removes_only_a_runs_own_paths(tmp_path: Path) -> None:
    _fake_run(tmp_path)
    st = RunState(tmp_path)
    assert st.prepare(FINGERPRINT, overwrite=True) is False
    st.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".wsicount"]
    assert sorted(p.name for p in (tmp_path / ".wsicount").iterdir()) == ["run.json", "tiles"]


def test_overwrite_with_user_files_inside_a_run_removes_nothing(tmp_path: Path) -> None:
    _fake_run(tmp_path)
    (tmp_path / "density" / "my-notes.txt").write_text("precious")
    before = _snapshot(tmp_path)
    with pytest.raises(OutputError, match="density/my-notes.txt") as e:
        RunState(tmp_path).prepare(FINGERPRINT, overwrite=True)
    assert "--overwrite" not in str(e.value)
    assert _snapshot(tmp_path) == before


def test_a_failed_runs_folder_with_user_files_is_not_cleared(tmp_path: Path) -> None:
    st = RunState(tmp_path)
    st.prepare(FINGERPRINT, overwrite=False)  # a run that then failed before finishing a tile
    st.release()
    (tmp_path / "important.txt").write_text("precious")
    with pytest.raises(OutputError, match="important.txt"):
        RunState(tmp_path).prepare({**FINGERPRINT, "params": {"tile_size": 256}}, overwrite=False)
    assert (tmp_path / "important.txt").read_text() == "precious"


def test_resuming_beside_user_files_removes_nothing(tmp_path: Path) -> None:
    st = RunState(tmp_path)
    st.prepare(FINGERPRINT, overwrite=False)
    st.write_record(TileRecord("0_0", 1.0))
    st.release()
    (tmp_path / "important.txt").write_text("precious")
    st = RunState(tmp_path)
    assert st.prepare(FINGERPRINT, overwrite=False) is True
    st.release()
    assert (tmp_path / "important.txt").read_text() == "precious"
    other = {**FINGERPRINT, "params": {**FINGERPRINT["params"], "tile_size": 256}}
    with pytest.raises(OutputError, match="different settings") as e:  # --overwrite would be refused: not advised
        RunState(tmp_path).prepare(other, overwrite=False)
    assert "--overwrite" not in str(e.value)


def test_settings_of_a_run_that_finished_no_tile_bind_nothing(tmp_path: Path) -> None:
    st = RunState(tmp_path)
    st.prepare(FINGERPRINT, overwrite=False)
    assert st.stored_params() == {}
    st.write_record(TileRecord("0_0", 1.0))
    assert st.stored_params() == FINGERPRINT["params"]
    st.release()


def test_the_refusal_names_the_setting_that_differs(tmp_path: Path) -> None:
    st = RunState(tmp_path)
    st.prepare(FINGERPRINT, overwrite=False)
    st.write_record(TileRecord("0_0", 1.0))
    st.release()
    other = {**FINGERPRINT, "params": {**FINGERPRINT["params"], "tile_size": 256}}
    with pytest.raises(OutputError, match="params.tile_size: 512 -> 256"):
        RunState(tmp_path).prepare(other, overwrite=False)
    assert differences({"a": {"b": 1, "c": None}}, {"a": {"b": 1, "c": 2.5}}) == ["a.c: unset -> 2.5"]


# -- end to end: wsicount.run, the CLI and batch ---------------------------------------------------


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("layout")
    return synth_slide(d / "s.tiff", format="tiff", size=(1024, 1024), seed=8).path


@pytest.fixture(scope="module")
def full_mask(tmp_path_factory) -> str:
    p = tmp_path_factory.mktemp("mask") / "all.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(p)
    return str(p)


def test_run_overwrite_keeps_files_beside_and_refuses_files_inside(slide: Path, full_mask: str,
                                                                   tmp_path: Path) -> None:
    (tmp_path / "important.txt").write_text("beside")
    out = tmp_path / "result"
    wsicount.count(slide, out, mask=full_mask, progress=False)
    wsicount.count(slide, out, mask=full_mask, tile_size=256, overwrite=True, progress=False)
    assert (tmp_path / "important.txt").read_text() == "beside"
    (out / "sub").mkdir()
    (out / "sub" / "notes.md").write_text("inside")
    before = _snapshot(out)
    r = subprocess.run([sys.executable, "-m", "wsicount", "run", str(slide), "--out", str(out), "--mask", full_mask,
                        "--overwrite", "-q"], capture_output=True, text=True, timeout=600)
    assert r.returncode == OutputError.exit_code, r.stderr
    assert "did not write (sub)" in r.stderr and "--overwrite" not in r.stderr and "Traceback" not in r.stderr
    assert _snapshot(out) == before


def test_batch_overwrite_refuses_only_the_folder_with_user_files(slide: Path, tmp_path: Path) -> None:
    other = synth_slide(tmp_path / "t.tiff", format="tiff", size=(1024, 1024), seed=9).path
    study = tmp_path / "study"
    study.mkdir()
    (study / "notes.txt").write_text("beside")
    (study / "s").mkdir()
    (study / "s" / "important.txt").write_text("inside")
    rows = batch([slide, other], study, overwrite=True, progress=False)
    by_slide = {Path(r["slide"]).name: r for r in rows}
    assert by_slide["s.tiff"]["status"] == "failed" and "did not write" in by_slide["s.tiff"]["error"]
    assert "--overwrite" not in by_slide["s.tiff"]["error"]
    assert by_slide["t.tiff"]["status"] == "ok"
    assert (study / "notes.txt").read_text() == "beside"
    assert sorted(p.name for p in (study / "s").iterdir()) == ["important.txt"]


def test_a_failed_run_does_not_poison_its_folder(slide: Path, tmp_path: Path) -> None:
    """A tile size too small for the model fails; the corrected command works in the same folder."""
    out = tmp_path / "out"
    with pytest.raises(Exception, match="tile.size"):
        wsicount.count(slide, out, tile_size=100, progress=False)
    s = wsicount.count(slide, out, progress=False)
    assert s["complete"] and s["processing"]["tile_size"] != 100
    assert json.loads((out / ".wsicount" / "run.json").read_text())["params"]["tile_size"] != 100


# --- time-lapse stack folders (StackLayout) ---------------------------------------------------

def _fake_stack_run(out: Path) -> None:
    """The files a finished stack run writes."""
    for rel in ("density.ome.zarr/.zgroup", "density.ome.zarr/.zattrs", "density.ome.zarr/0/.zarray",
                "density.ome.zarr/0/0.0.0", "density.ome.zarr/0/11.0.0", "timeline.csv", "growth.csv", "cells.csv",
                "summary.json", "timeline.png", ".timeline.csv.x1y2.tmp.csv", ".wsicount-stack/params.json",
                ".wsicount-stack/frames/000000.json"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("x")


def test_stack_layout_finds_nothing_foreign_in_a_stack_run(tmp_path: Path) -> None:
    from wsicount.store import StackLayout

    _fake_stack_run(tmp_path)
    assert StackLayout(tmp_path).foreign() == []


@pytest.mark.parametrize("rel", ["important.txt", "sub/notes.md", "density.ome.zarr/notes.txt",
                                 "density.ome.zarr/0/mine.csv", "summary.json/x", ".hidden", "regions.csv",
                                 "density/0/0.0", "report.html"])
def test_stack_layout_lists_user_entries_and_a_slide_runs_files(tmp_path: Path, rel: str) -> None:
    from wsicount.store import StackLayout

    _fake_stack_run(tmp_path)
    if rel.startswith("summary.json/"):
        (tmp_path / "summary.json").unlink()
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text("precious")
    found = StackLayout(tmp_path).foreign()
    top = rel.split("/")[0]
    assert found and all(f == top or f.startswith(top + "/") for f in found), found


@pytest.fixture(scope="module")
def tiny_stack(tmp_path_factory, oracle_model) -> tuple[Path, object]:
    """A 5-frame OME-TIFF stack and an exact counting model (density = image / 255)."""
    from wsicount.timelapse.write import write_tiff_stack

    d = tmp_path_factory.mktemp("stack")
    arr = np.zeros((5, 1, 1, 24, 24), np.uint8)
    for t in range(5):
        arr[t, 0, 0, 3, 2:2 + 2 * t + 1:2] = 255
    write_tiff_stack(d / "s.ome.tif", arr, np.arange(5.0))
    return d / "s.ome.tif", oracle_model


def test_a_stack_run_writes_exactly_its_layout(tmp_path: Path, tiny_stack) -> None:
    from wsicount.store import StackLayout
    from wsicount.timelapse import count_stack

    s = count_stack(tiny_stack[0], tmp_path / "o", tiny_stack[1])
    lay = StackLayout(tmp_path / "o")
    assert {p.name for p in lay.root.iterdir()} == lay.owned() and lay.foreign() == []
    assert set(s["outputs"].values()) <= lay.owned() and s["counts"] == [1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_stack_run_refuses_a_user_folder_and_leaves_it_untouched(tmp_path: Path, tiny_stack,
                                                                    overwrite: bool) -> None:
    from wsicount.timelapse import count_stack

    (tmp_path / "important.txt").write_text("precious")
    (tmp_path / "timeline.csv").write_text("my own timeline")  # a name we write, but no run of ours made it
    before = _snapshot(tmp_path)
    with pytest.raises(OutputError, match="did not write|no record") as e:
        count_stack(tiny_stack[0], tmp_path, tiny_stack[1], overwrite=overwrite)
    assert "--overwrite" not in str(e.value) or not overwrite
    assert _snapshot(tmp_path) == before


def test_stack_overwrite_removes_only_its_own_and_refuses_beside_user_files(tmp_path: Path, tiny_stack) -> None:
    from wsicount.timelapse import count_stack

    out = tmp_path / "o"
    count_stack(tiny_stack[0], out, tiny_stack[1])
    (out / ".wsicount-stack" / "frames" / "000002.json").unlink()  # resumed frames are recounted
    assert count_stack(tiny_stack[0], out, tiny_stack[1], overwrite=True)["resumed"] is False
    (out / "notes.md").write_text("precious")
    again = count_stack(tiny_stack[0], out, tiny_stack[1])  # resuming beside a user's file removes nothing
    assert again["resumed"] and (out / "notes.md").read_text() == "precious"
    before = _snapshot(out)
    with pytest.raises(OutputError, match="notes.md") as e:
        count_stack(tiny_stack[0], out, tiny_stack[1], overwrite=True)
    assert "--overwrite" not in str(e.value) and _snapshot(out) == before
    with pytest.raises(OutputError, match="other settings") as e:
        count_stack(tiny_stack[0], out, tiny_stack[1], focus="all")
    assert "--overwrite" not in str(e.value)


def test_stack_outputs_without_their_record_need_overwrite(tmp_path: Path, tiny_stack) -> None:
    from wsicount.timelapse import count_stack

    out = tmp_path / "o"
    count_stack(tiny_stack[0], out, tiny_stack[1])
    (out / ".wsicount-stack" / "params.json").unlink()
    with pytest.raises(OutputError, match="no record"):
        count_stack(tiny_stack[0], out, tiny_stack[1])
    assert count_stack(tiny_stack[0], out, tiny_stack[1], overwrite=True)["counts"][4] == 5.0
