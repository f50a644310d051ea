"""The run's domain guard: refuse a slide a model cannot count, and flag results that cannot be right.

Before a run, :func:`check_slide` compares the slide with what the model card says it was
trained on (``card.domain``, see :class:`wsicount.models.ModelCard`): modality (a bright
background at low resolution is brightfield, a dark one fluorescence), a known µm/px that
the slide can provide without upsampling, and a channel that carries signal. A mismatch is a
one-line :class:`DomainError` unless ``force`` is set, when it becomes a warning.

After a run, :func:`check_result` lists warnings for results no in-domain run produces:
a negative total, negative density mass, regional densities far beyond the training range,
more than 5 % of the density outside the tissue mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .channels import display_names, overview, resolve_channel
from .errors import DomainError, TileReadError

if TYPE_CHECKING:
    from .io import Slide
    from .models import ModelCard

__all__ = ["Modality", "image_modality", "slide_modality", "model_mpp", "run_channels", "check_slide",
           "expected_density", "check_result"]

#: a model's µm/px may exceed the slide's finest level by this factor (mild upsampling) before refusal
MAX_UPSAMPLE = 1.5
#: share of pixels (white glass, or black background) that makes a low-resolution view decisive
_DECISIVE = 0.02
#: a channel is empty when its 99th percentile at low resolution is this many times below the
#: brightest channel's, and that one is at least SIGNAL (of 255): JPEG bleed leaves ~5-10 in empty ones
EMPTY_RATIO = 6.0
SIGNAL = 32.0
#: regional or pooled densities beyond this multiple of the training maximum are flagged
DENSITY_FACTOR = 3.0
#: negative tile mass beyond this share of the positive mass is flagged
NEGATIVE_SHARE = 0.05
#: density outside the tissue mask beyond this share is flagged: the mask probably cut tissue. The
#: network's own response to background noise alone is a few per cent (2.1 % on ``make demo``'s
#: slide, whose count is within 0.1 % of its truth), so a lower bar would flag every run
OUTSIDE_SHARE = 0.05


class RunOptions(Protocol):
    """What :func:`check_slide` reads of a run's configuration (``RunConfig`` has these fields)."""

    force: bool
    model_mpp: float | None
    channel: str | None


@dataclass(frozen=True)
class Modality:
    """A low-resolution view's modality and the evidence: shares of white-glass and black pixels, median brightness."""

    kind: str | None  # "brightfield", "fluorescence", or None when the view is not decisive
    glass: float
    dark: float
    median: float

    def evidence(self) -> str:
        """Why, in a few words."""
        if self.kind == "brightfield":
            return f"bright background: {100 * self.glass:.0f} % white pixels at low resolution"
        if self.kind == "fluorescence":
            return f"dark background: {100 * self.dark:.0f} % black pixels at low resolution"
        return f"median brightness {self.median:.0f}"


def image_modality(img: np.ndarray) -> Modality:
    """Brightfield if white glass (all channels >= 200) dominates, fluorescence if black (all <= 40) does.

    Without a dominant background (a view filled with tissue) the median brightness decides
    (>= 160 brightfield, <= 60 fluorescence); between the two it is undecided (``kind`` None).
    """
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[..., None]
    a = a[..., :3]
    if a.size == 0:
        return Modality(None, 0.0, 0.0, 0.0)
    glass = float((a.min(axis=-1) >= 200).mean())
    dark = float((a.max(axis=-1) <= 40).mean())
    median = float(np.median(a.mean(axis=-1)))
    if glass >= _DECISIVE and glass >= 3 * dark:
        kind = "brightfield"
    elif dark >= _DECISIVE and dark >= 3 * glass:
        kind = "fluorescence"
    else:
        kind = "brightfield" if median >= 160 else "fluorescence" if median <= 60 else None
    return Modality(kind, glass, dark, median)


def slide_modality(slide: Slide) -> Modality:
    """:func:`image_modality` of the slide's coarsest level (at most ~1024 px a side)."""
    return image_modality(overview(slide))


def model_mpp(card: ModelCard, override: float | None = None) -> float | None:
    """µm/px the model runs at: ``override`` (``--model-mpp``), else the card's, else its domain's; None if unknown."""
    for v in (override, card.mpp, card.domain.get("mpp")):
        if v is not None:
            return float(v)
    return None


def run_channels(card: ModelCard, slide: Slide, channel: str | None) -> list[int]:
    """Channel indices the run feeds the model: ``channel`` (``--channel``) resolved on the slide, else the card's."""
    from .io import slide_info

    return resolve_channel(channel, slide_info(slide)["channel_names"], card.channels, len(card.channels))


def check_slide(card: ModelCard, slide: Slide, cfg: RunOptions) -> list[str]:
    """Refuse a slide outside the model's domain (DomainError, one line); with ``cfg.force`` return the mismatches as warnings.

    Reads the slide's coarsest level only; where it cannot be decoded, modality and channel are
    not judged (the run reports undecodable tiles itself, or skips them with --skip-bad-tiles).
    An empty list means the slide matches.
    """
    from .io import slide_info

    names = slide_info(slide)["channel_names"]
    resolve_channel(cfg.channel, names, card.channels, len(card.channels))  # an unknown --channel fails first
    try:
        img = overview(slide)
    except TileReadError:
        img = None
    problems = [_mpp_problem(card, slide, cfg.model_mpp)]
    if img is not None:
        problems += [_modality_problem(card, slide, img), _channel_problem(card, slide, img, names, cfg.channel)]
    problems = [p for p in problems if p]
    if problems and not cfg.force:
        raise DomainError("; ".join(problems) + " (--force runs anyway)")
    return [f"{p} (run anyway: --force)" for p in problems]


def _modality_problem(card: ModelCard, slide: Slide, img: np.ndarray) -> str | None:
    """The model's modality differs from the slide's (when the slide's is decisive)."""
    want = card.domain.get("modality") or card.modality
    got = image_modality(img)
    if got.kind is None or got.kind == want:
        return None
    return (f"model {card.name} was trained on {want} images but {slide.path.name} looks {got.kind} "
            f"({got.evidence()})")


def _mpp_problem(card: ModelCard, slide: Slide, override: float | None) -> str | None:
    """No µm/px for the model, or one finer than the slide's level 0 allows without upsampling."""
    mpp = model_mpp(card, override)
    if mpp is None:
        return (f"model {card.name} does not state the µm/px it was trained at: pass --model-mpp "
                "(its images' µm/px) to run it on a slide")
    if mpp * MAX_UPSAMPLE < slide.mpp:
        return (f"model {card.name} runs at {mpp:.3g} µm/px but {slide.path.name}'s finest level is "
                f"{slide.mpp:.3g} µm/px ({slide.mpp / mpp:.1f}x upsampling)")
    return None


def _channel_problem(card: ModelCard, slide: Slide, img: np.ndarray, names: Sequence[str],
                     channel: str | None) -> str | None:
    """A one-channel model reading a channel without signal while another channel has it."""
    idx = resolve_channel(channel, names, card.channels, len(card.channels))
    if len(idx) != 1 or img.ndim != 3 or img.shape[-1] < 2 or idx[0] >= img.shape[-1]:
        return None
    p99 = np.percentile(img.reshape(-1, img.shape[-1]), 99, axis=0)
    best = int(np.argmax(p99))
    if p99[best] < SIGNAL or EMPTY_RATIO * p99[idx[0]] >= p99[best]:
        return None
    shown = display_names(names)
    return (f"model {card.name} reads channel {shown[idx[0]]}, which is empty on {slide.path.name} "
            f"(99th percentile {p99[idx[0]]:.0f} of 255); the signal is in {shown[best]}: pass --channel {shown[best]}")


def expected_density(card: ModelCard, mpp: float | None) -> tuple[float, float] | None:
    """[lo, hi] cells/mm² of the training images: ``domain.cells_per_mm2``, or ``cells_per_mpx`` at ``mpp``."""
    d = card.domain
    if d.get("cells_per_mm2"):
        lo, hi = d["cells_per_mm2"]
        return float(lo), float(hi)
    if d.get("cells_per_mpx") and mpp:
        lo, hi = d["cells_per_mpx"]
        return float(lo) / mpp**2, float(hi) / mpp**2  # 1 Mpx at mpp µm/px covers mpp² mm²
    return None


def check_result(card: ModelCard, *, total: float, tile_sums: Sequence[float],
                 regional: dict[str, Any], mpp: float | None, tissue_mm2: float | None = None,
                 tile_mins: Sequence[float] | None = None, density_outside_mask: float | None = None) -> list[str]:
    """Warnings (one line each) for a result no in-domain run gives; empty when it looks plausible.

    ``tile_sums``/``tile_mins``: each tile core's density sum and minimum pixel (cells/px);
    ``regional``: the aggregate's per-grid summary (``{"100um": {"min": {...}, "max": {...}, "pooled": ...}}``);
    ``mpp``: µm/px the model ran at; ``tissue_mm2``: the tissue area; ``density_outside_mask``: share of the
    density outside the tissue before masking.
    """
    warnings: list[str] = []
    if total < 0:
        warnings.append(f"the density sums to {total:.0f}: a negative total is not a count; the slide is outside "
                        f"model {card.name}'s domain")
    sums = np.asarray(tile_sums, dtype=np.float64)
    neg, pos = float(-sums[sums < 0].sum()), float(sums[sums > 0].sum())
    if neg > NEGATIVE_SHARE * max(pos, 1e-9) and neg > 1.0:
        warnings.append(f"{int((sums < 0).sum())} of {sums.size} tiles have negative density ({-neg:.0f} cells "
                        f"against {pos:.0f} positive): the model is outside its domain")
    peak = 1.0 / (2.0 * math.pi * card.sigma_px**2)  # a lone cell's density peak (cells/px)
    if tile_mins is not None and len(tile_mins) and float(np.min(tile_mins)) < -peak:
        warnings.append(f"density pixels down to {float(np.min(tile_mins)):.3g} cells/px, below minus a cell's "
                        f"peak ({peak:.3g}): the model is outside its domain")
    pooled = total / tissue_mm2 if tissue_mm2 else None
    warnings += _regional_warnings(card, regional, mpp, pooled)
    warnings += _packing_warning(card, pooled)
    if density_outside_mask is not None and density_outside_mask > OUTSIDE_SHARE:
        warnings.append(f"{100 * density_outside_mask:.{0 if density_outside_mask >= 0.1 else 1}f} % of the density "
                        "fell outside the tissue mask: check the outline, or rerun with --tissue-mode none or --mask")
    return warnings


def _packing_warning(card: ModelCard, pooled: float | None) -> list[str]:
    """A density over what cells of the card's diameter can occupy (hexagonal packing: 2 / (sqrt(3) d²)) x 1.5."""
    d = card.domain.get("cell_diameter_um")
    if not d or pooled is None:
        return []
    ceiling = 2.0 / (math.sqrt(3.0) * d**2) * 1e6  # cells/mm² at hexagonal packing
    if pooled <= 1.5 * ceiling:
        return []
    return [f"{pooled:.0f} cells/mm² over the tissue: cells of ~{d:g} µm cannot exceed ~{ceiling:.0f} cells/mm²"]


def _regional_warnings(card: ModelCard, regional: dict[str, Any], mpp: float | None,
                       pooled: float | None = None) -> list[str]:
    """Densities far above, or negative far below, the training images' range (cells/mm²).

    ``pooled`` is the slide's density (else the regional summary's). Maxima are judged on
    grids at least half a training image wide (``domain.image_px`` at ``mpp``; the coarsest
    grid when none is): a smaller grid cell can hold a denser cluster than any whole training
    image did.
    """
    rng = expected_density(card, mpp)
    if rng is None:
        return []
    lo, hi = rng
    span = f"training range {lo:.0f}-{hi:.0f}"
    rows = {k: r for k, r in regional.items() if r.get("n_cells")}
    size = {k: float(str(k).removesuffix("um")) for k in rows}
    field = card.domain.get("image_px", 0) * (mpp or 0.0)
    wide = [k for k in rows if size[k] >= 0.5 * field] or ([max(rows, key=size.get)] if rows else [])
    if pooled is None and wide:
        pooled = rows[wide[0]].get("pooled")
    out = []
    if pooled is not None and pooled > DENSITY_FACTOR * hi:
        out.append(f"{pooled:.0f} cells/mm² over the tissue, over {DENSITY_FACTOR:g}x the {span} cells/mm²")
    else:
        out += [f"regional density up to {rows[k]['max']['density']:.0f} cells/mm² ({k} grid), over "
                f"{DENSITY_FACTOR:g}x the {span}" for k in wide if rows[k]["max"]["density"] > DENSITY_FACTOR * hi]
    if rows:
        bottom_key = min(rows, key=lambda k: rows[k]["min"]["density"])
        bottom = rows[bottom_key]["min"]["density"]
        if bottom < -0.5 * hi:
            out.append(f"regional density down to {bottom:.0f} cells/mm² ({bottom_key} grid): negative counts, {span}")
    return out
