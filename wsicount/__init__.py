"""wsicount: count cells on gigapixel whole-slide images with density-map regression.

Public API (everything the CLI does)::

    open_slide(path, mpp=None)           -> Slide (pyramid as xarray/Dask, mpp, vendor)
    run(slide, out, model=None, **opts)  -> xarray.Dataset (density, counts, summary)
    count(slide, out, model=None, **opts) -> dict (the same run; returns summary.json's content
                                            without importing dask/xarray; what the CLI calls)
    synth_slide(out, format="ndpi", ...) -> SynthTruth (a synthetic slide + ground truth)
    load_model(name_or_path)             -> LoadedModel (module + card)
    train(data, out, TrainConfig(...))   -> path of the trained model card
    evaluate(model, data, split="test")  -> EvalResult
    tune_allocator()                     -> bool (keep freed memory for reuse: ~25-40 % faster CPU
                                            inference on glibc; the CLI applies it, call it first)
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import WsicountError  # noqa: E402


def __getattr__(name: str):
    """Import heavy submodules lazily so ``import wsicount`` stays fast."""
    lazy = {
        "open_slide": ("io", "open_slide"),
        "Slide": ("io", "Slide"),
        "run": ("run", "run"),
        "count": ("run", "count"),
        "RunConfig": ("run", "RunConfig"),
        "synth_slide": ("synth", "synth_slide"),
        "load_model": ("models", "load_model"),
        "train": ("training.train", "train"),
        "TrainConfig": ("training.train", "TrainConfig"),
        "evaluate": ("training.evaluate", "evaluate"),
        "detect_tissue": ("tissue", "detect_tissue"),
        "tune_allocator": ("allocator", "tune_allocator"),
    }
    if name in lazy:
        import importlib

        mod, attr = lazy[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(f"module 'wsicount' has no attribute {name!r}")


__all__ = ["__version__", "WsicountError", "open_slide", "Slide", "run", "count", "RunConfig", "synth_slide", "load_model",
           "train", "TrainConfig", "evaluate", "detect_tissue", "tune_allocator"]
