"""Several density predictions ("views") of one input, for the spread-based count intervals.

* ``tta``: the 8 dihedral transforms (rot90 x flip) of the input through one model, each
  mapped back to the input's orientation. For a fully convolutional net whose input side is a
  multiple of its stride the transforms are exact symmetries of the sampling grid, so a view
  is the model's answer to the rotated slide; the count is the mean of the 8 views and costs
  8 forward passes.
* ``ensemble``: the same input through K models (members listed in the calibration record,
  paths relative to the card that holds it); the count is the members' mean, at K x the cost.
* ``mcdropout``: T sub-networks of one U-Net, each dropping a fixed random subset of the
  bottleneck's output channels (probability ``p``, kept ones scaled by 1/(1-p)) -- channel
  dropout with a mask drawn once per pass, folded into the bottleneck's batch-norm affine, so
  every pass is a deterministic fully convolutional net: tiles stay seam-free and a pass's
  slide count is that sub-network's count. The bundled models were trained **without**
  dropout, so this is test-time dropout on a net never trained with it; the conformal
  calibration fits how much of its spread is error. T x the cost.

The spread of the views' counts over an area (their variance) is the method's extra
variance term; an area's per-view counts add over disjoint tiles, so a tile record carries
its K per-view sums and a union's term is the variance of the summed per-view counts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import ModelError
from .uncertainty import method_record

__all__ = ["VIEW_METHODS", "DIHEDRAL", "undo_dihedral", "predict_views_batch", "predict_views", "ensemble_members",
           "head_path", "load_members", "mc_members", "method_models"]

#: methods whose count is the mean of several views, and the name of their spread term
VIEW_METHODS = {"tta": "tta_var", "ensemble": "ens_var", "mcdropout": "mc_var"}
#: the 8 dihedral transforms as (quarter turns, flip), in :func:`wsicount.training.data.dihedral`'s order
DIHEDRAL = tuple((k, flip) for k in range(4) for flip in (False, True))


def undo_dihedral(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Inverse of :func:`wsicount.training.data.dihedral` (rot90 by k, then optional flip) on the last two axes."""
    if flip:
        a = np.flip(a, axis=-1)
    return np.rot90(a, -k, axes=(-2, -1))


def _dihedral(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """rot90 by k, then an optional horizontal flip, on the last two axes."""
    a = np.rot90(a, k, axes=(-2, -1))
    return np.flip(a, axis=-1) if flip else a


def predict_views_batch(models: Sequence[Any], batch: np.ndarray, device: Any, precision: str,
                        tta: bool) -> np.ndarray:
    """(V, N, H, W) densities of a normalised (N, C, H, W) batch: 8 dihedral views of ``models[0]``
    (``tta``) or one view per model (an ensemble), each in the batch's orientation.

    Each transformed batch is reflect-padded to the model's stride like a plain prediction.
    """
    from .infer import pad_to_stride, predict_batch

    h, w = batch.shape[-2:]
    if not tta:
        return np.stack([predict_batch(m, pad_to_stride(batch, m.card.stride), device, precision)[:, :h, :w]
                         for m in models])
    m = models[0]
    out = []
    for k, flip in DIHEDRAL:
        xt = np.ascontiguousarray(_dihedral(batch, k, flip))
        th, tw = xt.shape[-2:]
        d = predict_batch(m, pad_to_stride(xt, m.card.stride), device, precision)[:, :th, :tw]
        out.append(undo_dihedral(d, k, flip))
    return np.stack(out)


def predict_views(models: Sequence[Any], image: np.ndarray, device: Any = "cpu", precision: str = "fp32",
                  tta: bool = True) -> np.ndarray:
    """(V, H, W) view densities of one image, normalised by the first model's card (members share it)."""
    from .infer import pick_device
    from .preprocess import normalize_image

    dev = pick_device(device) if isinstance(device, str) else device
    card = models[0].card
    x = normalize_image(image, card.channels, card.normalization)
    return predict_views_batch(models, x[None], dev, precision, tta)[:, 0]


def ensemble_members(record: Mapping[str, Any], card_path: str | os.PathLike) -> list[Path]:
    """Card paths of an ensemble calibration's members (relative ones from the card's folder)."""
    names = record.get("members") or []
    if len(names) < 2:
        raise ModelError("an ensemble calibration must list >= 2 member models ('members')")
    base = Path(card_path).parent
    paths = [Path(n) if Path(n).is_absolute() else base / n for n in names]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ModelError(f"ensemble member(s) not found: {', '.join(missing)}")
    return paths


def method_models(lm: Any, method: str, device: Any = "cpu") -> tuple[list[Any] | None, Any]:
    """(view models, variance head) that ``method`` needs beside ``lm``: tta its one model, ensemble
    its members, mcdropout its sub-networks, hetero its head; (None, None) for the others."""
    if method not in (*VIEW_METHODS, "hetero"):
        return None, None
    rec = method_record(lm.card.calibration, method)
    if method == "tta":
        return [lm], None
    if method == "ensemble":
        return load_members(ensemble_members(rec, lm.path), device), None
    if method == "mcdropout":
        return mc_members(lm, float(rec.get("p", 0.2)), int(rec.get("passes", 8))), None
    from .models.variance import load_head

    return None, load_head(head_path(rec, lm.path))


def head_path(record: Mapping[str, Any], card_path: str | os.PathLike) -> Path:
    """The variance head a ``hetero`` calibration names (relative to the card's folder)."""
    name = record.get("head")
    if not name:
        raise ModelError("a hetero calibration must name its variance head ('head')")
    p = Path(name) if Path(name).is_absolute() else Path(card_path).parent / name
    if not p.exists():
        raise ModelError(f"variance head not found: {p}")
    return p


def mc_members(lm: Any, p: float = 0.2, passes: int = 8, seed: int = 0) -> list[Any]:
    """``passes`` copies of a U-Net, copy t with bottleneck channel dropout mask t (see the module docstring)."""
    import copy

    import torch

    from .models import LoadedModel

    bn = getattr(getattr(lm.module, "bottleneck", None), "__getitem__", None)
    bn = bn(-1) if bn is not None else None
    if not isinstance(bn, torch.nn.BatchNorm2d) or not 0 < p < 1:
        raise ModelError(f"MC dropout needs a U-Net bottleneck ending in batch norm and 0 < p < 1 "
                         f"({lm.card.arch}, p={p})")
    out = []
    for t in range(passes):
        g = torch.Generator().manual_seed(seed + t)
        keep = (torch.rand(bn.num_features, generator=g) >= p).float() / (1.0 - p)
        m = copy.deepcopy(lm.module)
        with torch.no_grad():
            m.bottleneck[-1].weight.mul_(keep.to(bn.weight))
            m.bottleneck[-1].bias.mul_(keep.to(bn.bias))
        out.append(LoadedModel(m.eval(), lm.card, lm.path))
    return out


def load_members(paths: Sequence[str | os.PathLike], device: Any = "cpu") -> list[Any]:
    """Load the members; they must read the same channels with the same normalisation, stride and µm/px."""
    from .models import load_model

    models = [load_model(p, device=device) for p in paths]
    ref = models[0].card
    for m in models[1:]:
        c = m.card
        if (c.channels, c.normalization, c.stride, c.mpp) != (ref.channels, ref.normalization, ref.stride, ref.mpp):
            raise ModelError(f"ensemble member {m.card.name} reads its input differently from {ref.name} "
                             "(channels, normalisation, stride or µm/px)")
    return models
