"""Command-line interface: a thin layer over the Python API.

Every user-caused failure is reported as one line on stderr with a documented exit code
(the table in :mod:`wsicount.errors`); ``--debug`` shows the traceback instead. Option values
are checked before any heavy import (torch, dask, zarr) and before anything is written.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import sys
from pathlib import Path

import click

from . import __version__, checks
from .errors import EXIT_BATCH_FAILED, EXIT_INTERRUPTED, UsageError, WsicountError

EXIT_INTERNAL = 1


class _Group(click.Group):
    """Click group that turns exceptions into one-line messages unless --debug."""

    def invoke(self, ctx: click.Context):
        debug = ctx.params.get("debug", False) or "--debug" in sys.argv
        try:
            return super().invoke(ctx)
        except WsicountError as e:
            if debug:
                raise
            hint = f" (see '{ctx.command_path} {ctx.invoked_subcommand} --help')" if isinstance(e, UsageError) else ""
            click.echo(f"wsicount: error: {e}{hint}", err=True)
            ctx.exit(e.exit_code)
        except click.UsageError as e:  # click's parse errors: one line too, with the usage exit code
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            click.echo(f"wsicount: error: {e.format_message()} (see '{where} --help')", err=True)
            ctx.exit(UsageError.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("wsicount: interrupted (rerun the same command to resume)", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as e:  # noqa: BLE001 - last line of defence for users
            if debug:
                raise
            first = str(e).splitlines()[0] if str(e) else ""
            click.echo(f"wsicount: internal error: {type(e).__name__}: {first} (rerun with --debug for details)", err=True)
            ctx.exit(EXIT_INTERNAL)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(__version__, prog_name="wsicount")
def cli(debug: bool) -> None:
    """Count cells on gigapixel whole-slide images with density-map regression."""
    # the pipeline's notes for the user (e.g. a tile size that does not fit): one line each on stderr
    logger = logging.getLogger("wsicount")
    if not any(isinstance(h, _EchoWarnings) for h in logger.handlers):
        logger.addHandler(_EchoWarnings(logging.WARNING))
        logger.propagate = False
    if not debug:
        # readers' own log lines (tifffile reports a damaged page before raising) would precede
        # the one-line error; the error says what is wrong, --debug shows them
        logging.getLogger("tifffile").setLevel(logging.CRITICAL)


class _EchoWarnings(logging.Handler):
    """Log records as ``wsicount: warning: ...`` lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"wsicount: warning: {record.getMessage()}", err=True)


class _Finite(click.FloatRange):
    """A float range that also refuses nan and infinity."""

    def convert(self, value, param, ctx):  # noqa: ANN001 - click's signature
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


POSITIVE = _Finite(min=0, min_open=True)
NON_NEGATIVE_FLOAT = _Finite(min=0)
SHARE = _Finite(min=0, max=1)
POSITIVE_INT = click.IntRange(min=1)
NON_NEGATIVE_INT = click.IntRange(min=0)
BACKENDS = click.Choice(["auto", "openslide", "tifffile", "zarr"])
BACKEND_HELP = ("Slide reader: openslide (NDPI, SVS, MRXS, ...), tifffile (tiled TIFF, OME-TIFF, NDPI, SVS), "
                "zarr (OME-Zarr folders); auto picks one from the file.")


_CHANNEL_HELP = ("Channel a one-channel model reads: red|green|blue, dapi|hoechst (blue), fitc|gfp (green), "
                 "tritc|cy3 (red), an OME channel name, or an index (see 'wsicount info') [the model card's].")


def _domain_options(f):
    """--channel, --model-mpp and --force: what the model reads, at which scale, and overriding the domain guard."""
    f = click.option("--force", is_flag=True, help="Run a slide the domain guard refuses (modality, µm/px, empty "
                     "channel); the mismatch is recorded as a warning.")(f)
    f = click.option("--model-mpp", type=POSITIVE, default=None,
                     help="µm/px of the model's training images, for a card that states none.")(f)
    return click.option("--channel", default=None, help=_CHANNEL_HELP)(f)


@cli.command(short_help="Count cells on a slide: density map, count maps and reports.")
@click.argument("slide", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Output folder (OME-Zarr + reports).")
@click.option("--model", "-m", default=None, help="Bundled model name or path to NAME.json/.safetensors [melanocyte-trp1].")
@click.option("--tile-size", type=NON_NEGATIVE_INT, default=0, show_default=True,
              help="Network-input pixels per tile side (halo included); 0 = auto: 1024, or the largest size "
                   "that fits in the available memory (summary.json: processing.tile_plan).")
@click.option("--batch-size", type=NON_NEGATIVE_INT, default=0, show_default=True,
              help="Tiles per forward pass; 0 = auto (1 on CPU, from free memory on CUDA).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N | mps")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="Inference precision; auto = bf16 where the CPU/GPU computes it natively (AMX, AVX512-BF16, "
                   "Ampere+) and the model card validated it (low_precision), else fp32. See BENCHMARKS.md.")
@click.option("--prefetch", type=POSITIVE_INT, default=2, show_default=True,
              help="Batches decoded ahead of the network per task (memory: prefetch x batch x tile²).")
@click.option("--decode-cache-mb", type=NON_NEGATIVE_INT, default=128, show_default=True,
              help="Decoded slide segments kept per process for overlapping tile windows (tifffile backend; 0 = off).")
@click.option("--mpp", type=POSITIVE, default=None, help="Level-0 µm per pixel, for slides that lack it (overrides the file).")
@click.option("--mask", type=click.Path(path_type=Path), default=None, help="User tissue mask image (non-zero = tissue).")
@click.option("--tissue-mode", type=click.Choice(["fluorescence", "brightfield", "none"]), default=None,
              help="Tissue detection mode [from the model card]; none counts the whole slide.")
@click.option("--grid-um", type=POSITIVE, multiple=True, default=(100.0, 1000.0), show_default=True,
              help="Physical grid cell size(s) for count maps, µm (repeatable).")
@click.option("--threads", type=POSITIVE_INT, default=None, help="Concurrent tile tasks on the local scheduler [min(2, cores)].")
@click.option("--workers", type=POSITIVE_INT, default=None, help="Start a LocalCluster with N worker processes.")
@click.option("--scheduler", envvar="DASK_SCHEDULER_ADDRESS", default=None, help="Address of an existing Dask scheduler.")
@click.option("--backend", type=BACKENDS, default="auto", show_default=True, help=BACKEND_HELP)
@click.option("--overwrite", is_flag=True, help="Discard results already in --out and start fresh.")
@click.option("--skip-bad-tiles", is_flag=True, help="Record undecodable tiles and continue instead of failing.")
@click.option("--geojson-units", type=click.Choice(["px", "um"]), default="px", show_default=True,
              help="cells.geojson coordinates: level-0 pixels (QuPath) or micrometres.")
@click.option("--regions", type=click.Path(path_type=Path), default=None,
              help="User regions: a QuPath GeoJSON export (annotations) or a label image; each gets its count, "
                   "interval and density in regions.csv (a time-lapse stack: a count per frame in growth.csv and a "
                   "doubling time in summary.json; coordinates in frame pixels).")
@click.option("--regions-units", type=click.Choice(["px", "um"]), default=None,
              help="GeoJSON coordinates: level-0 pixels or µm [what the file states, else px].")
@click.option("--regions-scale", type=POSITIVE, default=1.0, show_default=True,
              help="Label image: level-0 pixels per label pixel.")
@click.option("--uncertainty", type=click.Choice(["poisson", "shared", "hetero", "tta", "ensemble", "mcdropout"]), default=None,
              help="Count-interval method, one the model card is calibrated for [the card's default, shared: "
                   "no extra compute]. hetero adds a variance head (one small convolution); tta counts the mean of "
                   "the 8 rotated/flipped views of every tile (8x the compute); ensemble the mean of the card's "
                   "member models (one pass each); mcdropout the mean of T bottleneck-dropout passes (T x).")
@click.option("--frame-interval", type=POSITIVE, default=None,
              help="Time-lapse stacks: minutes between frames, when the stack states no times.")
@click.option("--times", type=click.Path(path_type=Path), default=None,
              help="Time-lapse stacks: CSV of frame times (columns frame,time_h).")
@click.option("--focus", default="best", show_default=True,
              help="Time-lapse stacks: focal plane per frame: best (sharpest), all (median count), or a plane index.")
@_domain_options
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def run(slide: Path, out: Path, model: str | None, quiet: bool, frame_interval: float | None, times: Path | None,
        focus: str, **opts) -> None:
    """Count cells on SLIDE (a whole slide, or a time-lapse stack) and write maps, tables and reports to --out."""
    checks.require_path(slide, "slide")
    from .timelapse.series import is_slide_series
    from .timelapse.stack import is_stack

    if is_slide_series(slide):  # one pyramid per time point: the slide path, frame by frame
        from .cli_stacks import run_series

        run_series(slide, out, model, quiet, frame_interval, times, opts)
        return
    if is_stack(slide):
        from .cli_stacks import run_stack

        run_stack(slide, out, model, frame_interval, times, focus, opts)
        return
    if opts["mask"] is not None:
        checks.require_path(opts["mask"], "mask", "file")
    checks.check_tile_size(opts["tile_size"], model)
    checks.check_device(opts["device"])
    from .runner import count

    opts["grid_um"] = tuple(opts["grid_um"])
    opts["mask"] = str(opts["mask"]) if opts["mask"] else None
    if opts["regions"] is not None:
        checks.require_path(opts["regions"], "regions", "file")
        opts["regions"] = str(opts["regions"])
    s = count(slide, out, model=model, progress=not quiet, **opts)
    for w in s.get("warnings", []):
        click.echo(f"wsicount: warning: {w}", err=True)
    if s["total_cells"] < 0:  # not a count: the warnings say why
        click.echo(f"{slide.name}: no count (the density map sums to {s['total_cells']:.0f}, below zero; see the "
                   f"warnings), {s['timings']['total']:.1f} s -> {out}")
    else:
        cpm, ci = s["cells_per_mm2"], s.get("total_cells_ci")
        interval = f" ({100 * ci['level']:g} % CI {ci['lo']:.0f}–{ci['hi']:.0f})" if ci else ""
        click.echo(f"{slide.name}: {s['total_cells']:.0f} cells{interval} in {s['tissue_area_mm2']:.2f} mm² of "
                   f"tissue ({cpm:.1f} cells/mm²), {s['timings']['total']:.1f} s -> {out}")
    if s["bad_tiles"]:
        click.echo(f"wsicount: warning: {len(s['bad_tiles'])} undecodable tile(s) counted as 0 cells "
                   f"({s['bad_tiles_tissue_mm2']:.3f} mm² of tissue); see {out / 'bad_tiles.csv'}", err=True)


@cli.command(short_help="Print levels, sizes, mpp and vendor of a slide.")
@click.argument("slide", type=click.Path(path_type=Path))
@click.option("--mpp", type=POSITIVE, default=None, help="Override the level-0 µm per pixel.")
@click.option("--backend", type=BACKENDS, default="auto", show_default=True, help=BACKEND_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(slide: Path, mpp: float | None, backend: str, as_json: bool) -> None:
    """Print levels, sizes, mpp, vendor and channels of SLIDE."""
    checks.require_path(slide, "slide")
    from .channels import channel_table
    from .io import open_slide, slide_info
    from .store.atomic import tidy

    sl = open_slide(slide, mpp=mpp, backend=backend)
    d = tidy(slide_info(sl))  # 0.4523, not 0.45230000000000004
    d["channel_table"] = channel_table(sl, d["channel_names"])
    if as_json:
        click.echo(json.dumps(d, indent=2, default=str))
        return
    for k, v in d.items():
        if k not in ("levels", "channel_table"):
            click.echo(f"{k:>16}: {v}")
    click.echo(f"{'channel table':>16}: --channel NAME or INDEX; mean intensity (0-255) at low resolution")
    for ch in d["channel_table"]:
        click.echo(f"                  {ch['index']}  {ch['name']:<12} mean {ch['mean']:.1f}")
    click.echo("          levels:")
    for lv in d["levels"]:
        click.echo("                  " + "  ".join(f"{k}={v}" for k, v in lv.items()))


@cli.command(short_help="Write a synthetic pyramidal slide with cells at known positions.")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["ndpi", "tiff", "ome-tiff", "ome-zarr", "svs", "frames"]), default="ndpi",
              show_default=True, help="Slide format; an embryo stack: tiff, ome-tiff, ome-zarr or frames (a folder of JPEGs).")
@click.option("--size", type=click.IntRange(min=checks.SYNTH_MIN_SIDE), nargs=2, default=(8192, 8192), show_default=True,
              metavar="H W", help="Slide size (NDPI: multiples of 8, at most 65535); an embryo frame is H x H [500].")
@click.option("--seed", type=NON_NEGATIVE_INT, default=0, show_default=True)
@click.option("--look", type=click.Choice(["fluorescence", "brightfield", "embryo"]), default="fluorescence",
              show_default=True, help="embryo: a time-lapse stack of a dividing embryo (+ per-frame truth).")
@click.option("--mpp", type=POSITIVE, default=0.4523, show_default=True, help="µm per pixel (an embryo: 0.5 unless given).")
@click.option("--density", "cell_density", type=NON_NEGATIVE_FLOAT, default=300.0, show_default=True,
              help="Cells per mm² of tissue.")
@click.option("--tissue", type=click.Choice(["disk", "blob"]), default="disk", show_default=True)
@click.option("--tissue-fraction", type=_Finite(min=0, min_open=True, max=1), default=0.6, show_default=True)
@click.option("--no-mpp", is_flag=True, help="Write no pixel size (to test --mpp).")
@click.option("--frames", "n_frames", type=POSITIVE_INT, default=100, show_default=True, help="Embryo: number of frames.")
@click.option("--planes", "n_planes", type=POSITIVE_INT, default=3, show_default=True, help="Embryo: focal planes per frame.")
@click.option("--hard", is_flag=True, help="Embryo: harder settings (more fragments, dimmer, more blur and noise).")
@click.pass_context
def synth(ctx: click.Context, out: Path, fmt: str, size: tuple[int, int], seed: int, look: str, mpp: float,
          cell_density: float, tissue: str, tissue_fraction: float, no_mpp: bool, n_frames: int, n_planes: int,
          hard: bool) -> None:
    """Write a synthetic pyramidal slide, or an embryo time-lapse stack, with known ground truth."""
    if look == "embryo":
        _synth_embryo(ctx, out, fmt, size, seed, mpp, n_frames, n_planes, hard)
        return
    if fmt == "frames":
        raise click.BadParameter("a folder of frames is written only for --look embryo", param_hint="--format")
    checks.check_synth_size(fmt, size)
    from .synth import synth_slide

    t = synth_slide(out, format=fmt, size=tuple(size), seed=seed, look=look, mpp=mpp, cell_density_per_mm2=cell_density,
                    tissue=tissue, tissue_fraction=tissue_fraction, write_mpp=not no_mpp)
    click.echo(f"{t.path}: {t.shape[0]}x{t.shape[1]} px, {t.n_cells} cells, tissue {t.tissue_area_mm2:.3f} mm² "
               f"(truth: {t.points_path})")


def _synth_embryo(ctx: click.Context, out: Path, fmt: str, size: tuple[int, int], seed: int, mpp: float,
                  n_frames: int, n_planes: int, hard: bool) -> None:
    """The embryo branch of ``synth``: defaults of a time-lapse incubator where the slide defaults differ."""
    import dataclasses

    from .synth.embryo import EMBRYO_FORMATS, HARD, EmbryoParams, synth_embryo

    given = {n: ctx.get_parameter_source(n) != click.core.ParameterSource.DEFAULT for n in ("fmt", "size", "mpp")}
    fmt = fmt if given["fmt"] else "ome-tiff"
    if fmt not in EMBRYO_FORMATS:
        raise click.BadParameter(f"an embryo stack is written as {', '.join(EMBRYO_FORMATS)}", param_hint="--format")
    p = EmbryoParams(size=size[0] if given["size"] else 500, mpp=mpp if given["mpp"] else 0.5, n_frames=n_frames,
                     n_planes=n_planes)
    if hard:
        p = dataclasses.replace(p, **HARD)
    t = synth_embryo(out, format=fmt, params=p, seed=seed)
    ev = ", ".join(f"{k}={'-' if v is None else v}" for k, v in t.cleavage_frames.items())
    click.echo(f"{out}: {n_frames} frames x {n_planes} planes of {p.size}x{p.size} px, up to {int(t.counts.max())} "
               f"cells; cleavage frames {ev} (truth: {out}.truth.json, {out}.cells.csv)")


@cli.command(short_help="Count cells on many slides; failures are recorded, the rest finish.")
@click.argument("slides", nargs=-1, type=click.Path(path_type=Path))
@click.option("--manifest", type=click.Path(path_type=Path), default=None, help="CSV with a 'slide' column.")
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Study folder: one subfolder per slide + study.csv.")
@click.option("--model", "-m", default=None, help="Bundled model name or path.")
@click.option("--workers", type=POSITIVE_INT, default=None, help="Start a LocalCluster with N worker processes.")
@click.option("--scheduler", envvar="DASK_SCHEDULER_ADDRESS", default=None, help="Address of an existing Dask scheduler.")
@click.option("--tile-size", type=NON_NEGATIVE_INT, default=0, show_default=True, help="As for run; 0 = auto.")
@click.option("--batch-size", type=NON_NEGATIVE_INT, default=0, show_default=True, help="0 = auto, as for 'wsicount run'.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True)
@click.option("--mpp", type=POSITIVE, default=None, help="Level-0 µm per pixel for slides that lack it.")
@click.option("--overwrite", is_flag=True, help="Discard results already in each slide's folder and start fresh.")
@click.option("--skip-bad-tiles", is_flag=True, help="Record undecodable tiles and continue instead of failing.")
@_domain_options
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def batch(slides: tuple[Path, ...], manifest: Path | None, out: Path, model: str | None, quiet: bool, **opts) -> None:
    """Count cells on many SLIDES (or --manifest); failures are recorded, the rest finish."""
    if manifest is not None:
        checks.require_path(manifest, "manifest", "file")
    elif not slides:
        raise UsageError("no slides given (pass SLIDES... or --manifest)")
    checks.check_tile_size(opts["tile_size"], model)
    from .batch import batch as batch_api, read_manifest

    paths = list(slides) + (read_manifest(manifest) if manifest else [])
    if not paths:
        raise UsageError(f"manifest {manifest} lists no slides")
    from .timelapse.stack import is_stack

    if all(is_stack(p) for p in paths):  # one time-lapse stack per embryo or well: a table of cleavage times
        from .timelapse.study import count_stacks

        rows = count_stacks(paths, out, model, mpp=opts["mpp"], overwrite=opts["overwrite"])
        table = out / "study_timelapse.csv"
    else:
        rows = batch_api(paths, out, model=model, progress=not quiet, **opts)
        table = out / "study.csv"
    failed = [r for r in rows if r["status"] != "ok"]
    click.echo(f"{len(rows) - len(failed)}/{len(rows)} inputs counted -> {table}")
    if failed:
        for r in failed:
            click.echo(f"  {r['slide']}: {r['status']}: {r.get('error', '')}", err=True)
        sys.exit(EXIT_BATCH_FAILED)


# the model commands (train, evaluate, models) live beside this module; importing registers them
from . import cli_models  # noqa: E402,F401


def main() -> None:
    """Console-script entry point."""
    import atexit
    import os

    from .allocator import tune_allocator

    if os.environ.get("WSICOUNT_ALLOCATOR", "tuned") != "default":
        tune_allocator()  # first, before any thread: see wsicount.allocator
    atexit.register(_end_without_teardown)  # registered first, so it runs after every other handler
    try:
        cli(prog_name="wsicount")
    except SystemExit as e:
        _exit_state["ok"] = e.code in (None, 0)
        raise
    finally:
        # The interpreter's final garbage collection walks every object of torch and dask
        # (throughput.py's "process start + exit" column shows the total). The outputs are
        # written and closed by now, and atexit handlers still run; frozen objects are just not collected.
        gc.freeze()


_exit_state = {"ok": False}


def _end_without_teardown() -> None:
    """After a successful command, end the process once the atexit handlers have run, skipping module teardown.

    Python exits in three steps: it joins non-daemon threads, runs the atexit handlers
    (last registered first, so this one, registered before any other, comes last), then
    tears the modules down object by object, torch's and zarr's included, with both cores
    otherwise idle. By the time this handler runs every output is written and closed, the
    side worker and any Dask cluster have been shut down by their own handlers, and stdout
    and stderr are flushed here; the teardown would only free memory the OS reclaims anyway.
    A failed command exits the ordinary way.
    """
    if _exit_state["ok"]:
        import os

        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed or broken pipe: nothing left to deliver
                pass
        os._exit(0)


if __name__ == "__main__":
    main()
