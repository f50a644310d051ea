"""Model packaging: safetensors weights plus a JSON model card.

A packaged model is two files side by side: ``NAME.safetensors`` (weights, fp16 or fp32) and
``NAME.json`` (the card). The card says everything inference needs to reproduce training
conditions: architecture and kwargs, channel selection, intensity normalisation, expected
um/px, density scale (targets were multiplied by it; predictions are divided by it), stride
and receptive radius. Weights are never unpickled: safetensors only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelError
from ..store.atomic import atomic_write, atomic_write_with

if TYPE_CHECKING:  # torch is imported where weights are read or written: a card alone needs none of it
    import torch
    from torch import nn

__all__ = ["ModelCard", "LoadedModel", "save_model", "load_model", "read_card", "bundled_models", "resolve_model_path"]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_MODEL = "melanocyte-trp1"


@dataclass
class ModelCard:
    """Everything needed to run a trained density model on new images."""

    name: str
    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    version: str = "1"
    #: indices into RGB to feed the network (e.g. [1] = green); a 1-channel image is used as is
    channels: list[int] = field(default_factory=lambda: [0])
    #: intensity normalisation: {"kind": "percentile", "low": 1.0, "high": 99.5}
    normalization: dict[str, Any] = field(default_factory=lambda: {"kind": "percentile", "low": 1.0, "high": 99.5})
    #: expected micrometres per pixel of the network input (None: unknown, use image pixels)
    mpp: float | None = None
    #: how an image without µm/px is brought to the input scale before the network sees it
    #: (training and ``wsicount evaluate`` alike, see :mod:`wsicount.training.scale`):
    #: {"kind": "nucleus_diameter", "target_px": D} resamples so nuclei measure D px; {} = as is
    input_scale: dict[str, Any] = field(default_factory=dict)
    density_scale: float = 100.0
    sigma_px: float = 6.0
    stride: int = 8
    receptive_radius: int = 50
    #: "fluorescence" or "brightfield": which tissue-detection mode suits this model's slides
    modality: str = "fluorescence"
    #: minimum distance between detected cell centres, in network-input pixels
    peak_min_distance_px: int = 3
    #: reduced precisions validated on this model's accuracy benchmark; ``precision='auto'``
    #: uses bf16 only when it is listed here (and the hardware computes it natively)
    low_precision: list[str] = field(default_factory=list)
    #: what the model was trained on, read by the run's domain guard: "modality"
    #: ("fluorescence" | "brightfield"), "stain" (e.g. "DAPI", "TRP1", "H&E"), "mpp" (µm/px the
    #: training images had), "cell_diameter_um", "cells_per_mm2" ([lo, hi] over the training
    #: images), "intensity" ([lo, hi]: 1st and 99th percentile of the raw channel it reads),
    #: "channel" (the channel's name, e.g. "green", "dapi"); a key may be absent when unknown.
    #: Scale-free forms for cards without µm/px: "cells_per_mpx" ([lo, hi] cells per million
    #: input pixels) and "image_px" (the training images' side); "source" says where each came from
    domain: dict[str, Any] = field(default_factory=dict)
    #: the count interval's calibration: "method", "data" and "split" it was calibrated on, the
    #: fitted terms the method needs, and the "coverage" it reached there ({} = uncalibrated)
    calibration: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise the card as pretty JSON."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelCard":
        """Build a card from a dict, rejecting unknown keys so typos are caught."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ModelError(f"model card has unknown keys: {sorted(unknown)}")
        return cls(**d)


@dataclass
class LoadedModel:
    """A model ready for inference: the module (eval mode) and its card."""

    module: nn.Module
    card: ModelCard
    path: Path


def bundled_models() -> dict[str, Path]:
    """Names of the models shipped inside the package -> their card paths."""
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.json")) if p.with_suffix(".safetensors").exists()}


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """Turn a bundled name, a card/weights path or a folder into the card's path."""
    if model is None:
        model = DEFAULT_MODEL
    bundled = bundled_models()
    if isinstance(model, str) and model in bundled:
        return bundled[model]
    p = Path(model)
    if p.is_dir():
        cards = sorted(p.glob("*.json"))
        cards = [c for c in cards if c.with_suffix(".safetensors").exists()]
        if len(cards) != 1:
            raise ModelError(f"model folder {p} must hold exactly one NAME.json + NAME.safetensors pair")
        return cards[0]
    if p.suffix == ".safetensors":
        p = p.with_suffix(".json")
    if not p.exists():
        names = ", ".join(bundled) or "none"
        raise ModelError(f"model {str(model)!r} is neither a bundled model ({names}) nor an existing file")
    return p


def save_model(module: nn.Module, card: ModelCard, path: str | os.PathLike, half: bool = True) -> Path:
    """Write ``PATH.safetensors`` + ``PATH.json`` atomically; returns the card path."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in module.state_dict().items():
        v = v.detach().cpu().contiguous()
        # fp16 halves the bundle; BN counters and statistics stay exact in fp32
        if half and v.is_floating_point() and "running" not in k:
            v = v.half()
        state[k] = v
    wpath = path.with_suffix(".safetensors")
    cpath = path.with_suffix(".json")
    # weights first: a card never points at weights that are not there yet
    atomic_write_with(wpath, lambda f: save_file(state, f))
    atomic_write(cpath, card.to_json())
    return cpath


def read_card(model: str | os.PathLike | None = None) -> tuple[ModelCard, Path]:
    """The card of a bundled or user model and its path, without importing torch; bad JSON is a ModelError."""
    cpath = resolve_model_path(model)
    try:
        raw = json.loads(cpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"model card {cpath} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ModelError(f"model card {cpath} must hold a JSON object, not {type(raw).__name__}")
    try:
        return ModelCard.from_dict(raw), cpath
    except TypeError as e:  # a required field (name, arch) is missing
        raise ModelError(f"model card {cpath} is incomplete: {e}") from None


def load_model(model: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a bundled or user model in eval mode; a corrupt or mismatched file is a ModelError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from . import build_model

    card, cpath = read_card(model)
    wpath = cpath.with_suffix(".safetensors")
    if not wpath.exists():
        raise ModelError(f"model weights {wpath} are missing")
    # cards written before output heads existed describe a linear output: clamp it (ReLU), which
    # changes nothing where it was >= 0 and removes every negative density
    kwargs = {"head": "relu", **card.arch_kwargs}
    try:
        module = build_model(card.arch, **kwargs)
    except (ValueError, TypeError) as e:
        raise ModelError(f"model card {cpath} describes an invalid architecture: {e}") from None
    try:
        state = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"model weights {wpath} are corrupt: {str(e).splitlines()[0]}") from None
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ModelError(
            f"model weights {wpath.name} do not match architecture {card.arch!r} "
            f"({len(missing)} missing, {len(extra)} unexpected tensors)"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ModelError(
                f"model weights {wpath.name} do not match architecture {card.arch!r}: "
                f"{k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
            )
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    if getattr(module, "stride", card.stride) != card.stride:
        raise ModelError(f"model card says stride {card.stride} but {card.arch} has {module.stride}")
    module.eval().to(device)
    return LoadedModel(module=module, card=card, path=cpath)
