"""The CLI's bad-input matrix: one readable line on stderr, the documented exit code, no
traceback, and nothing written that claims to be complete; a failed run never changes the
results already in its output folder; reruns and ``--overwrite`` of a finished run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageDraw

import wsicount
from wsicount.errors import OutputError
from wsicount.synth import synth_slide


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "wsicount", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


@pytest.fixture(scope="module")
def small_ndpi(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    return synth_slide(d / "small.ndpi", format="ndpi", size=(2048, 2048), seed=5).path


def _text_png(path: Path) -> Path:
    """A valid PNG showing some text (a picture, not a slide)."""
    img = Image.new("RGB", (320, 80), "white")
    ImageDraw.Draw(img).text((10, 30), "not a whole-slide image", fill="black")
    img.save(path, format="PNG")
    return path


def _black_tiff(path: Path) -> Path:
    """A readable tiled TIFF with a pixel size whose pixels are all black: no tissue."""
    tifffile.imwrite(path, np.zeros((1024, 1024, 3), np.uint8), tile=(256, 256), photometric="rgb",
                     compression="zlib", resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    return path


def _unwritable_out(tmp: Path) -> Path:
    """An output path that cannot be created, even by root: its parent is a regular file."""
    (tmp / "a-file").write_text("")
    return tmp / "a-file" / "out"


def _bad_inputs(tmp: Path, small: Path) -> dict[str, tuple[Path, list[str], int]]:
    (tmp / "adir").mkdir()
    (tmp / "empty.ndpi").write_bytes(b"")
    (tmp / "notes.ndpi").write_text("this is not a slide\n" * 50)
    (tmp / "random.svs").write_bytes(np.random.default_rng(0).bytes(64 * 1024))
    shutil.copy(_text_png(tmp / "text.png"), tmp / "text-png.svs")
    (tmp / "scan.czi").write_bytes(b"ZISRAWFILE" + bytes(22) + np.random.default_rng(1).bytes(4096))
    data = small.read_bytes()
    (tmp / "trunc.ndpi").write_bytes(data[: len(data) // 2])
    tiff = synth_slide(tmp / "whole.tiff", format="tiff", size=(1024, 1024), seed=3).path.read_bytes()
    (tmp / "trunc.tiff").write_bytes(tiff[: 2 * len(tiff) // 3])
    nompp = synth_slide(tmp / "nompp.tiff", format="tiff", size=(1024, 1024), seed=2, write_mpp=False).path
    return {
        "nonexistent": (tmp / "nope.ndpi", [], 10),
        "directory": (tmp / "adir", [], 10),
        "empty": (tmp / "empty.ndpi", [], 3),
        "text-as-ndpi": (tmp / "notes.ndpi", [], 3),
        "random-bytes-as-svs": (tmp / "random.svs", [], 3),
        "png-as-svs": (tmp / "text-png.svs", [], 3),
        # a valid image of a format that is not a slide format: unsupported, code 3
        "png": (tmp / "text.png", [], 3),
        "fake-czi": (tmp / "scan.czi", [], 3),  # CZI magic, garbage after it
        "truncated": (tmp / "trunc.ndpi", [], 3),
        "truncated-tiff": (tmp / "trunc.tiff", [], 3),
        "missing-mpp": (nompp, [], 4),
        "no-tissue": (_black_tiff(tmp / "black.tiff"), [], 5),
        "corrupt-model": (small, ["--model", str(_corrupt_model(tmp))], 6),
        "mismatched-model": (small, ["--model", str(_mismatched_model(tmp))], 6),
        "unwritable-output": (small, ["--out", str(_unwritable_out(tmp))], 7),
    }


def _corrupt_model(tmp: Path) -> Path:
    from wsicount.models import resolve_model_path

    card = resolve_model_path(None)
    (tmp / "bad.json").write_text(card.read_text())
    (tmp / "bad.safetensors").write_bytes(b"\x00" * 100)
    return tmp / "bad.json"


def _mismatched_model(tmp: Path) -> Path:
    """A card naming another architecture than the one its (intact) weights belong to."""
    from wsicount.models import resolve_model_path

    card = resolve_model_path(None)
    d = json.loads(card.read_text())
    d["arch"], d["arch_kwargs"] = ("fcrn" if d["arch"] != "fcrn" else "unet"), {"in_channels": len(d["channels"])}
    (tmp / "mismatch.json").write_text(json.dumps(d))
    shutil.copy(card.with_suffix(".safetensors"), tmp / "mismatch.safetensors")
    return tmp / "mismatch.json"


@pytest.fixture(scope="module")
def cases(tmp_path_factory, small_ndpi):
    return _bad_inputs(tmp_path_factory.mktemp("bad"), small_ndpi)


def _assert_one_line_error(r: subprocess.CompletedProcess, code: int) -> str:
    """The documented exit code and exactly one 'wsicount: error:' line, no traceback; returns it."""
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("wsicount: error:")
    assert "Traceback" not in r.stderr
    return lines[0]


@pytest.mark.parametrize("case", ["nonexistent", "directory", "empty", "text-as-ndpi", "random-bytes-as-svs",
                                  "png-as-svs", "png", "fake-czi", "truncated", "truncated-tiff", "missing-mpp",
                                  "no-tissue", "corrupt-model", "mismatched-model", "unwritable-output"])
def test_bad_input_is_one_line_error(cases, case, tmp_path):
    path, extra, code = cases[case]
    out = tmp_path / "out"
    r = _cli("run", str(path), "--out", str(out), "-q", *extra)  # a later --out wins
    _assert_one_line_error(r, code)
    assert not (out / "summary.json").exists()


_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.mark.skipif(_ROOT, reason="root ignores file permissions")
def test_unreadable_slide_file(small_ndpi, tmp_path):
    slide = tmp_path / "locked.ndpi"
    shutil.copy(small_ndpi, slide)
    slide.chmod(0o000)
    try:
        msg = _assert_one_line_error(_cli("run", str(slide), "--out", str(tmp_path / "out"), "-q"), 10)
    finally:
        slide.chmod(0o600)
    assert "not readable" in msg


@pytest.mark.skipif(_ROOT, reason="root ignores directory permissions")
def test_read_only_output_folder(small_ndpi, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        r = _cli("run", str(small_ndpi), "--out", str(parent / "out"), "-q")
    finally:
        parent.chmod(0o700)
    assert "not writable" in _assert_one_line_error(r, 7)


@pytest.fixture(scope="module")
def full_mask(tmp_path_factory) -> Path:
    """A mask marking the whole slide as tissue (runs here test outputs, not tissue detection)."""
    p = tmp_path_factory.mktemp("mask") / "all.png"
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(p)
    return p


@pytest.fixture(scope="module")
def complete_run(small_ndpi, full_mask, tmp_path_factory) -> Path:
    """An output folder holding a finished run of ``small_ndpi``."""
    out = tmp_path_factory.mktemp("done") / "out"
    assert wsicount.run(small_ndpi, out, mask=str(full_mask), progress=False).attrs["complete"]
    return out


def _snapshot(out: Path) -> dict[str, str]:
    """Hash of every file in an output folder, by relative path."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_failed_runs_keep_earlier_results(cases, complete_run, small_ndpi, full_mask, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(complete_run, out)
    before = _snapshot(out)
    other_slide, _, _ = cases["no-tissue"]
    msg = _assert_one_line_error(_cli("run", str(other_slide), "--out", str(out), "-q"), 7)
    assert "another slide" in msg
    with pytest.raises(OutputError, match="different settings"):
        wsicount.run(small_ndpi, out, mask=str(full_mask), tile_size=256, progress=False)
    assert _snapshot(out) == before


def test_foreign_nonempty_output_folder_is_refused(small_ndpi, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="did not write") as e:
            wsicount.run(small_ndpi, out, overwrite=overwrite, progress=False)
        assert "--overwrite" not in str(e.value)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.docx"] and (out / "thesis.docx").read_text() == "precious"


def test_no_tissue_then_rerun_with_mask(cases, full_mask, tmp_path):
    path, _, _ = cases["no-tissue"]
    out = tmp_path / "out"
    _assert_one_line_error(_cli("run", str(path), "--out", str(out), "-q"), 5)
    # the failed attempt finished no tile, so the advised fix must work in the same folder
    ds = wsicount.run(path, out, mask=str(full_mask), progress=False)
    assert ds.attrs["complete"] and (out / "summary.json").exists()


def _numbers(out: Path) -> tuple:
    """Everything a rerun must reproduce: counts, regional extremes, tables."""
    s = json.loads((out / "summary.json").read_text())
    keep = ("total_cells", "tissue_area_mm2", "cells_per_mm2", "n_cells_detected", "regional", "bad_tiles")
    return ({k: s[k] for k in keep}, (out / "regions.csv").read_text(), (out / "cells.csv").read_text(),
            (out / "cells.geojson").read_text())


def test_rerun_of_complete_run_rewrites_identical_reports(complete_run, small_ndpi, full_mask, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(complete_run, out)
    (out / "report.html").unlink()
    wsicount.run(small_ndpi, out, mask=str(full_mask), progress=False)
    s = json.loads((out / "summary.json").read_text())
    assert s["processing"]["n_tiles_resumed"] == s["processing"]["n_tiles_tissue"]  # nothing recomputed
    assert (out / "report.html").exists()
    assert _numbers(out) == _numbers(complete_run)


def test_overwrite_starts_fresh(complete_run, small_ndpi, full_mask, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(complete_run, out)
    stale = out / "counts_50um" / "0"  # a count map of another grid, from an earlier run
    stale.mkdir(parents=True)
    (stale / ".zarray").write_text("{}")
    wsicount.run(small_ndpi, out, mask=str(full_mask), tile_size=256, overwrite=True, progress=False)
    s = json.loads((out / "summary.json").read_text())
    assert s["processing"]["n_tiles_resumed"] == 0 and not s["processing"]["resumed"]
    assert s["parameters"]["tile_size"] == 256 and not (out / "counts_50um").exists()
    ref = json.loads((complete_run / "summary.json").read_text())
    assert s["total_cells"] == pytest.approx(ref["total_cells"], rel=1e-4)  # tile size does not change counts


def test_debug_shows_traceback(cases, tmp_path):
    path, _, _ = cases["text-as-ndpi"]
    r = _cli("--debug", "run", str(path), "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_missing_mpp_can_be_given(cases, tmp_path):
    path, _, _ = cases["missing-mpp"]
    r = _cli("info", str(path), "--mpp", "0.5", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["mpp"] == pytest.approx(0.5)


def test_info_and_synth_commands(tmp_path):
    r = _cli("synth", str(tmp_path / "s.tiff"), "--format", "tiff", "--size", "1024", "1536", "--seed", "4")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "s.tiff.points.csv").exists() or any(tmp_path.glob("*.points.csv"))
    r = _cli("info", str(tmp_path / "s.tiff"))
    assert r.returncode == 0, r.stderr
    assert "1536" in r.stdout and "mpp" in r.stdout


_TEARDOWN_PROBE = """
import sys
import wsicount.cli as cli


class Sentinel:
    def __del__(self):
        sys.stderr.write("module teardown ran\\n")


cli.sentinel = Sentinel()  # freed only when the interpreter tears the modules down
sys.argv = ["wsicount", *sys.argv[1:]]
cli.main()
"""


def test_successful_command_skips_teardown_and_keeps_its_output():
    """After success the CLI ends without module teardown, and piped stdout still arrives whole."""
    p = subprocess.run([sys.executable, "-c", _TEARDOWN_PROBE, "--version"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert wsicount.__version__ in p.stdout  # stdout is a pipe (block-buffered): flushed before os._exit
    assert "module teardown ran" not in p.stderr


def test_failed_command_exits_the_ordinary_way(tmp_path):
    """A failing command keeps its exit code and its message, and the interpreter tears down as usual."""
    p = subprocess.run([sys.executable, "-c", _TEARDOWN_PROBE, "run", str(tmp_path / "missing.ndpi"), "-o",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 10
    assert "no such file" in p.stderr
    assert "module teardown ran" in p.stderr
