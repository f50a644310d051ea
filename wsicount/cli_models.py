"""The CLI's model commands: ``train``, ``evaluate`` and ``models`` (registered on :data:`wsicount.cli.cli`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import checks
from .errors import UsageError
from .cli import _CHANNEL_HELP, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, NON_NEGATIVE_FLOAT, SHARE, cli

__all__ = ["train", "evaluate", "models_cmd"]


@cli.command(short_help="Train a density model on a dataset folder.")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Model folder to write.")
@click.option("--arch", type=click.Choice(["unet", "fcrn", "cellnet"]), default=None, help="Architecture [unet].")
@click.option("--width", type=POSITIVE_INT, default=None, help="Filters at full resolution [the architecture's: 32].")
@click.option("--head", type=click.Choice(["relu", "softplus", "linear"]), default=None,
              help="Output activation [relu]; relu and softplus never give a negative density.")
@click.option("--init", default=None,
              help="Fine-tune: start from this model's weights (a bundled name such as blastomere, or a card path); "
                   "its architecture, channels, normalisation and target sigma are kept, and images with um_per_px "
                   "are resampled to its µm/px.")
@click.option("--ellipse-fraction", type=POSITIVE, default=0.3, show_default=True,
              help="Points CSVs with ellipse columns a,b[,angle] (semi-axes in px, angle of a in degrees from +x "
                   "towards +y): each target Gaussian's sigma is this fraction of the cell's semi-axes.")
@click.option("--name", default=None, callback=lambda ctx, p, v: _file_name(p, v), help="Model name [DATA-ARCH].")
@click.option("--epochs", type=POSITIVE_INT, default=200, show_default=True, help="At most this many epochs (see --max-minutes).")
@click.option("--max-minutes", type=NON_NEGATIVE_FLOAT, default=40.0, show_default=True,
              help="Time budget of the training loop; the learning-rate schedule anneals within it. 0 = none.")
@click.option("--batch-size", type=POSITIVE_INT, default=8, show_default=True)
@click.option("--crop", type=POSITIVE_INT, default=None, help="Training crop side in px [256, or the smallest image].")
@click.option("--lr", type=POSITIVE, default=1e-3, show_default=True)
@click.option("--loss", type=click.Choice(["l1", "mse", "content_mse"]), default="l1", show_default=True)
@click.option("--count-weight", type=NON_NEGATIVE_FLOAT, default=0.0, show_default=True, help="Weight of the count-error term.")
@click.option("--sigma-um", type=POSITIVE, default=None, help="Target Gaussian sigma in µm (needs um_per_px).")
@click.option("--sigma-px", type=POSITIVE, default=None,
              help="Target sigma in pixels [0.4 x the 10th-percentile nearest-neighbour spacing of the points].")
@click.option("--channels", default=None, help="Comma-separated RGB channel indices, e.g. 1 for green [auto].")
@click.option("--modality", type=click.Choice(["fluorescence", "brightfield"]), default="fluorescence", show_default=True)
@click.option("--stain", default=None, help="Stain or marker, recorded in the card's domain (e.g. DAPI, H&E).")
@click.option("--cell-diameter-um", type=POSITIVE, default=None, help="Cell diameter for the card [from the points].")
@click.option("--scale-jitter", type=POSITIVE, nargs=2, default=None, help="Random rescale range, e.g. 0.8 1.25 [off].")
@click.option("--frame", type=SHARE, default=0.0, show_default=True,
              help="Share of training crops drawn from images laid on slide background (black, or glass in "
                   "brightfield), with no target there: a model to run on slides then counts each image as "
                   "'evaluate' does (vgg-cells: 0.5).")
@click.option("--freeze-bn", is_flag=True,
              help="Keep the --init model's BatchNorm statistics (fine-tuning then normalises as inference does).")
@click.option("--ema", type=SHARE, default=0.0, show_default=True,
              help="Decay per step of a moving average of the weights (e.g. 0.999; 0 = off): validation, epoch "
                   "selection and the saved model use the averaged weights.")
@click.option("--n-val", type=POSITIVE_INT, default=None, help="Validation images held out of 'train' [20%].")
@click.option("--n-cal", type=NON_NEGATIVE_INT, default=0, show_default=True,
              help="Training images held out for interval calibration (used neither to train nor to pick the epoch).")
@click.option("--val-every", type=POSITIVE_INT, default=2, show_default=True, help="Validate every N epochs.")
@click.option("--patience", type=POSITIVE_INT, default=20, show_default=True, help="Early stopping patience (epochs).")
@click.option("--monitor", type=click.Choice(["val_loss", "val_mae"]), default="val_mae", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="Autocast precision of training; auto = bf16 only on CUDA or an AMX CPU (emulated bf16 "
                   "training was ~30x slower than fp32 on an AVX2 CPU), else fp32.")
@click.option("--threads", type=POSITIVE_INT, default=None, help="Torch threads [all cores].")
@click.option("--seed", type=NON_NEGATIVE_INT, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoints/last.pt.")
@click.option("--quiet", "-q", is_flag=True)
def train(data: Path, out: Path, channels: str | None, quiet: bool, resume: bool, width: int | None,
          head: str | None, max_minutes: float, **opts) -> None:
    """Train a density model on DATA (wsicount dataset layout or VGG dot PNGs; points may carry
    ellipse columns a,b,angle for shape-aware targets), from scratch or from a model (--init)."""
    checks.require_path(data, "dataset", "dir")
    picked = checks.parse_channels(channels)
    if opts["freeze_bn"] and opts["init"] is None:
        raise UsageError("--freeze-bn keeps a started model's BatchNorm statistics: it needs --init")
    if opts["ema"] >= 1:
        raise UsageError("--ema must be below 1 (1 would keep the initial weights)")
    if opts["init"] is not None:
        given = [f"--{n}" for n, v in (("arch", opts["arch"]), ("width", width), ("head", head), ("channels", picked))
                 if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: a fine-tune keeps the --init model's; leave them out")
    from .training.train import TrainConfig, train as train_api

    opts["arch"] = opts["arch"] or "unet"
    arch_kwargs: dict = {"head": head or "relu"}
    if width is not None:
        arch_kwargs["base_filters" if opts["arch"] == "unet" else "width"] = width
    cfg = TrainConfig(**opts, arch_kwargs=arch_kwargs, max_minutes=max_minutes or None, channels=picked)
    card = train_api(data, out, cfg, resume=resume, progress=not quiet)
    c = json.loads(card.read_text())
    click.echo(f"model written to {card} (validation MAE {c['metrics']['val_mae']:.2f}; "
               f"precision {c['training']['precision']}, sigma {c['sigma_px']:.2f} px)")


@cli.command("models", short_help="List the bundled models with their domain and held-out scores.")
@click.option("--json", "as_json", is_flag=True, help="Print the cards' name, domain and metrics as JSON.")
def models_cmd(as_json: bool) -> None:
    """List the bundled models with their domain and held-out scores."""
    from .models import bundled_models, read_card
    from .uncertainty import calibrated_methods

    rows = []
    for name in bundled_models():
        card, _ = read_card(name)
        rows.append({"name": name, "arch": card.arch, "head": card.arch_kwargs.get("head", "relu"),
                     "domain": {"modality": card.modality, **card.domain},
                     "benchmark": card.metrics.get("benchmark", {}),
                     "intervals": calibrated_methods(card.calibration)})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        d, b = r["domain"], r["benchmark"]
        mpp = f"{d['mpp']:.3g} µm/px" if d.get("mpp") else "µm/px unknown"
        score = (f"{b['dataset']} {b['split']} (n={b['n_images']}): MAE {b['mae']:.2f}, A_err {100 * b['a_err']:.1f} %"
                 if b else "no benchmark recorded")
        cov = b.get("coverage", {}).get("0.95") if b else None
        if cov is not None:
            score += f", 95 % interval ({b['interval_method']}) covers {100 * cov:.0f} %"
        methods = ", ".join(r["intervals"]) or "none (uncalibrated)"
        click.echo(f"{r['name']:<16} {d.get('modality', '?')}, {d.get('stain') or '?'}, channel {d.get('channel', '?')}, "
                   f"{mpp}; {score}; intervals: {methods}")


def _file_name(param: click.Parameter, value: str | None) -> str | None:
    """``value`` if it can name a file in the model folder (no separators, not empty)."""
    if value is not None and (not value.strip(". ") or "/" in value or "\\" in value or "\0" in value):
        raise click.BadParameter(f"{value!r} is not a file name (no '/', not empty).", param=param)
    return value


@cli.command(short_help="Score a model on a dataset split: count errors and detection.")
@click.argument("model")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--split", default="test", show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write metrics JSON here.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None, help="Per-image CSV [next to --json].")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None, help="Scatter PNG [next to --json].")
@click.option("--device", default="cpu", show_default=True, help="auto | cpu | cuda | cuda:N | mps")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="As for 'wsicount run'.")
@click.option("--channel", default=None, help=_CHANNEL_HELP)
@click.option("--context", type=click.Choice(["none", "background"]), default="none", show_default=True,
              help="none: each image alone, as the model was trained; background: on the slide background, counted "
                   "as 'wsicount run' counts it on a slide (the image grown by the receptive radius).")
@click.option("--uncertainty", type=click.Choice(["poisson", "shared", "hetero", "tta", "ensemble", "mcdropout"]),
              default=None, help="Interval method, one the card is calibrated for [the card's default]. tta, ensemble "
                                 "and mcdropout count each image as the mean of their views, as 'wsicount run' does.")
def evaluate(model: str, data: Path, split: str, json_path: Path | None, csv_path: Path | None,
             plot_path: Path | None, device: str, precision: str, channel: str | None, context: str,
             uncertainty: str | None) -> None:
    """Evaluate MODEL (bundled name or path) on DATA's --split: counts and detection."""
    checks.require_path(data, "dataset", "dir")
    checks.check_split(data, split)
    checks.check_device(device)
    for option, path in (("--json", json_path), ("--csv", csv_path), ("--plot", plot_path)):
        checks.require_parent(path, option)
    from .models.card import read_card

    read_card(model)  # a missing or broken model fails here, before the dataset is read
    from .training.evaluate import evaluate as eval_api, write_evaluation

    res = eval_api(model, data, split=split, device=device, precision=precision, channel=channel, context=context,
                   uncertainty=uncertainty)
    if json_path is not None:
        csv_path = csv_path or json_path.with_suffix(".csv")
        plot_path = plot_path or json_path.with_suffix(".png")
    write_evaluation(res, json_path=json_path, csv_path=csv_path, plot_path=plot_path)
    m = res.metrics
    click.echo(f"{m['n_images']} images: MAE {m['mae']:.2f}, RMSE {m['rmse']:.2f}, "
               f"A_err {100 * m['a_err']:.2f} %, T_err {100 * m['t_err']:.2f} %")
    if "coverage" in m:
        click.echo(f"95 % intervals ({m['interval_method']}): cover {100 * m['coverage']['0.95']:.0f} % of images, "
                   f"mean width {m['mean_width']['0.95']:.1f} cells")
