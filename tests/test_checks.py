"""Bad option values are usage errors: one line naming the option, exit 2 (10 for a missing
input path), no traceback, nothing written, and no heavy import (torch, dask, zarr) first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from wsicount import checks
from wsicount.cli import cli
from wsicount.errors import InputError, ModelError, OutputError, UsageError

USAGE, MODEL, OUTPUT, INPUT = UsageError.exit_code, ModelError.exit_code, OutputError.exit_code, InputError.exit_code


def _torch_has_cuda() -> bool:
    import torch

    return torch.version.cuda is not None and torch.cuda.device_count() > 0


# (command line after "wsicount", the exit code, a word the error line must contain).
# "S" is an existing (empty) slide file, "D" a dataset folder with a manifest, "M" a CSV;
# every output goes to "out" (run, batch, train) or "new.ndpi" (synth) in the working folder.
RUN = ["run", "S", "--out", "out"]
BATCH = ["batch", "S", "--out", "out"]
TRAIN = ["train", "D", "--out", "out"]
EVAL = ["evaluate", "melanocyte-trp1", "D"]
SYNTH = ["synth", "new.ndpi"]
CASES: dict[str, tuple[list[str], int, str]] = {
    "run-no-out": (["run", "S"], USAGE, "--out"),
    "run-no-slide": (["run", "--out", "out"], USAGE, "SLIDE"),
    "run-missing-slide": (["run", "nope.ndpi", "--out", "out"], INPUT, "nope.ndpi"),
    "run-model": (RUN + ["--model", "no-such-model"], MODEL, "no-such-model"),
    "run-tile-size-small": (RUN + ["--tile-size", "7"], USAGE, "--tile-size"),
    "run-tile-size-negative": (RUN + ["--tile-size", "-1"], USAGE, "--tile-size"),
    "run-tile-size-text": (RUN + ["--tile-size", "big"], USAGE, "--tile-size"),
    "run-batch-size": (RUN + ["--batch-size", "-1"], USAGE, "--batch-size"),
    "run-device-name": (RUN + ["--device", "gpu"], USAGE, "--device"),
    "run-device-index": (RUN + ["--device", "cuda:99"], USAGE, "--device"),
    "run-precision": (RUN + ["--precision", "fp64"], USAGE, "--precision"),
    "run-prefetch": (RUN + ["--prefetch", "0"], USAGE, "--prefetch"),
    "run-decode-cache": (RUN + ["--decode-cache-mb", "-5"], USAGE, "--decode-cache-mb"),
    "run-mpp-zero": (RUN + ["--mpp", "0"], USAGE, "--mpp"),
    "run-mpp-nan": (RUN + ["--mpp", "nan"], USAGE, "--mpp"),
    "run-mpp-inf": (RUN + ["--mpp", "inf"], USAGE, "--mpp"),
    "run-mask": (RUN + ["--mask", "nomask.png"], INPUT, "nomask.png"),
    "run-tissue-mode": (RUN + ["--tissue-mode", "xray"], USAGE, "--tissue-mode"),
    "run-grid-um": (RUN + ["--grid-um", "0"], USAGE, "--grid-um"),
    "run-threads": (RUN + ["--threads", "0"], USAGE, "--threads"),
    "run-workers": (RUN + ["--workers", "0"], USAGE, "--workers"),
    "run-backend": (RUN + ["--backend", "bioformats"], USAGE, "--backend"),
    "run-geojson-units": (RUN + ["--geojson-units", "cm"], USAGE, "--geojson-units"),
    "run-unknown-option": (RUN + ["--tilesize", "512"], USAGE, "--tilesize"),
    "batch-no-slides": (["batch", "--out", "out"], USAGE, "no slides"),
    "batch-manifest": (["batch", "--manifest", "nope.csv", "--out", "out"], INPUT, "nope.csv"),
    "batch-model": (BATCH + ["--model", "no-such-model"], MODEL, "no-such-model"),
    "batch-workers": (BATCH + ["--workers", "0"], USAGE, "--workers"),
    "batch-tile-size": (BATCH + ["--tile-size", "7"], USAGE, "--tile-size"),
    "batch-batch-size": (BATCH + ["--batch-size", "-2"], USAGE, "--batch-size"),
    "batch-precision": (BATCH + ["--precision", "int8"], USAGE, "--precision"),
    "batch-mpp": (BATCH + ["--mpp", "-0.5"], USAGE, "--mpp"),
    "train-missing-data": (["train", "nodata", "--out", "out"], INPUT, "nodata"),
    "train-no-out": (["train", "D"], USAGE, "--out"),
    "train-arch": (TRAIN + ["--arch", "resnet"], USAGE, "--arch"),
    "train-name": (TRAIN + ["--name", "../evil"], USAGE, "--name"),
    "train-epochs": (TRAIN + ["--epochs", "0"], USAGE, "--epochs"),
    "train-batch-size": (TRAIN + ["--batch-size", "0"], USAGE, "--batch-size"),
    "train-lr": (TRAIN + ["--lr", "0"], USAGE, "--lr"),
    "train-loss": (TRAIN + ["--loss", "huber"], USAGE, "--loss"),
    "train-count-weight": (TRAIN + ["--count-weight", "-1"], USAGE, "--count-weight"),
    "train-frame": (TRAIN + ["--frame", "1.5"], USAGE, "--frame"),
    "train-freeze-bn": (TRAIN + ["--freeze-bn"], USAGE, "--freeze-bn"),
    "train-sigma-um": (TRAIN + ["--sigma-um", "0"], USAGE, "--sigma-um"),
    "train-sigma-px": (TRAIN + ["--sigma-px", "-3"], USAGE, "--sigma-px"),
    "train-channels-range": (TRAIN + ["--channels", "3"], USAGE, "--channels"),
    "train-channels-repeat": (TRAIN + ["--channels", "1,1"], USAGE, "--channels"),
    "train-modality": (TRAIN + ["--modality", "xray"], USAGE, "--modality"),
    "train-n-val": (TRAIN + ["--n-val", "0"], USAGE, "--n-val"),
    "train-patience": (TRAIN + ["--patience", "0"], USAGE, "--patience"),
    "train-monitor": (TRAIN + ["--monitor", "val_acc"], USAGE, "--monitor"),
    "train-precision": (TRAIN + ["--precision", "fp16"], USAGE, "--precision"),
    "train-max-minutes": (TRAIN + ["--max-minutes", "-1"], USAGE, "--max-minutes"),
    "train-seed": (TRAIN + ["--seed", "-1"], USAGE, "--seed"),
    "evaluate-missing-data": (["evaluate", "melanocyte-trp1", "nodata"], INPUT, "nodata"),
    "evaluate-model": (["evaluate", "no-such-model", "D"], MODEL, "no-such-model"),
    "evaluate-split": (EVAL + ["--split", "validation"], USAGE, "--split"),
    "evaluate-device": (EVAL + ["--device", "tpu"], USAGE, "--device"),
    "evaluate-precision": (EVAL + ["--precision", "fp8"], USAGE, "--precision"),
    "evaluate-json": (EVAL + ["--json", "nodir/m.json"], OUTPUT, "--json"),
    "evaluate-csv": (EVAL + ["--csv", "nodir/m.csv"], OUTPUT, "--csv"),
    "evaluate-plot": (EVAL + ["--plot", "nodir/m.png"], OUTPUT, "--plot"),
    "synth-format": (SYNTH + ["--format", "czi"], USAGE, "--format"),
    "synth-size-small": (SYNTH + ["--size", "8", "8"], USAGE, "--size"),
    "synth-size-ndpi": (SYNTH + ["--size", "100", "100"], USAGE, "--size"),
    "synth-size-one": (SYNTH + ["--size", "512"], USAGE, "--size"),
    "synth-seed": (SYNTH + ["--seed", "-3"], USAGE, "--seed"),
    "synth-look": (SYNTH + ["--look", "sepia"], USAGE, "--look"),
    "synth-mpp": (SYNTH + ["--mpp", "0"], USAGE, "--mpp"),
    "synth-density": (SYNTH + ["--density", "-1"], USAGE, "--density"),
    "synth-tissue": (SYNTH + ["--tissue", "cube"], USAGE, "--tissue"),
    "synth-tissue-fraction-zero": (SYNTH + ["--tissue-fraction", "0"], USAGE, "--tissue-fraction"),
    "synth-tissue-fraction-big": (SYNTH + ["--tissue-fraction", "1.5"], USAGE, "--tissue-fraction"),
    "synth-frames": (SYNTH + ["--look", "embryo", "--frames", "0"], USAGE, "--frames"),
    "synth-planes": (SYNTH + ["--look", "embryo", "--planes", "-2"], USAGE, "--planes"),
    "synth-frames-format": (SYNTH + ["--format", "frames"], USAGE, "--format"),
    "info-missing-slide": (["info", "nope.ndpi"], INPUT, "nope.ndpi"),
    "info-mpp": (["info", "S", "--mpp", "-1"], USAGE, "--mpp"),
    "info-backend": (["info", "S", "--backend", "pil"], USAGE, "--backend"),
    "no-such-command": (["count", "S"], USAGE, "count"),
}


def _workdir(root: Path) -> dict[str, str]:
    """An empty slide file, a dataset folder with a manifest, and a manifest CSV; names -> paths."""
    (root / "slide.ndpi").write_bytes(b"")
    (root / "data").mkdir()
    (root / "data" / "manifest.csv").write_text("name,count,split,um_per_px,n_points\na,1,train,,1\nb,2,test,,2\n")
    (root / "study.csv").write_text("slide\nslide.ndpi\n")
    return {"S": str(root / "slide.ndpi"), "D": str(root / "data"), "M": str(root / "study.csv")}


def _args(case: str, names: dict[str, str]) -> list[str]:
    return [names.get(a, a) for a in CASES[case][0]]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_value_is_one_line_usage_error(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    names = _workdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    r = CliRunner().invoke(cli, _args(case, names))
    _, code, word = CASES[case]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == code, (r.exit_code, r.stderr, r.exception)
    assert len(lines) == 1 and lines[0].startswith("wsicount: error:"), r.stderr
    assert word in lines[0]
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no output folder


def test_usage_and_missing_input_codes_differ() -> None:
    assert UsageError.exit_code == 2  # what click gives its own usage errors
    assert len({UsageError.exit_code, InputError.exit_code, 1}) == 3


@pytest.mark.skipif(_torch_has_cuda(), reason="this torch sees a CUDA device")
def test_cuda_without_cuda_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    names = _workdir(tmp_path)
    for args in ([*RUN, "--device", "cuda"], [*EVAL, "--device", "cuda:0"]):
        r = CliRunner().invoke(cli, [names.get(a, a) for a in args])
        assert r.exit_code == USAGE, r.stderr
        assert "--device" in r.stderr and "CUDA" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


_PROBE = """
import json, sys
from click.testing import CliRunner
from wsicount.cli import cli

heavy = ("torch", "dask", "zarr", "distributed", "xarray")
found = {}
for case, args in json.loads(sys.argv[1]).items():
    CliRunner().invoke(cli, args)
    found[case] = sorted(m for m in heavy if m in sys.modules)
print(json.dumps(found))
"""


def test_bad_values_are_caught_before_heavy_imports(tmp_path: Path) -> None:
    """In a fresh interpreter no invalid value imports torch, dask or zarr before it is refused."""
    names = _workdir(tmp_path)
    cases = {c: _args(c, names) for c in sorted(CASES) if CASES[c][1] != MODEL and "device" not in c}
    import wsicount

    here = str(Path(wsicount.__file__).resolve().parents[1])  # the child imports this checkout, not another install
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    p = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(cases)], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert {c: m for c, m in json.loads(p.stdout).items() if m} == {}, p.stderr


def test_help_lists_every_command_in_full() -> None:
    r = CliRunner().invoke(cli, ["--help"])
    assert r.exit_code == 0
    listing = r.output.split("Commands:")[1]
    assert "..." not in listing
    for name, cmd in cli.commands.items():
        assert cmd.short_help and cmd.short_help in " ".join(listing.split()), name


def test_backend_option_is_explained() -> None:
    for command in ("run", "info"):
        r = CliRunner().invoke(cli, [command, "--help"])
        text = " ".join(r.output.split())
        assert "--backend" in text and "openslide" in text and "OME-Zarr" in text


def test_min_tile_size_follows_the_model_halo() -> None:
    from wsicount.models.card import read_card
    from wsicount.tiling import TileGrid

    low, name = checks.min_tile_size(None)
    card, _ = read_card(None)
    halo = TileGrid.halo_for(card.receptive_radius, card.stride, card.peak_min_distance_px + 1)
    assert name == card.name
    assert TileGrid.core_for(low, halo, card.stride) == card.stride  # the smallest core the grid accepts
    assert TileGrid.core_for(low - 1, halo, card.stride) < card.stride
    checks.check_tile_size(low, None)
    checks.check_tile_size(0, None)
    with pytest.raises(UsageError, match=f"at least {low} px"):
        checks.check_tile_size(low - 1, None)


def test_parse_channels() -> None:
    assert checks.parse_channels(None) is None
    assert checks.parse_channels("1") == [1]
    assert checks.parse_channels("0, 2") == [0, 2]
    for bad in ("", "a", "0,0", "-1", "4"):
        with pytest.raises(UsageError, match="--channels"):
            checks.parse_channels(bad)


def test_synth_size_rules() -> None:
    checks.check_synth_size("ndpi", (1024, 2048))
    checks.check_synth_size("tiff", (100, 100))
    for fmt, size in (("tiff", (15, 100)), ("ndpi", (100, 1024)), ("ndpi", (65536, 8))):
        with pytest.raises(UsageError, match="--size"):
            checks.check_synth_size(fmt, size)
