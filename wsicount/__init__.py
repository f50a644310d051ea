"""wsicount: count cells on gigapixel whole-slide images with density-map regression.

Public API (everything the CLI does)::

    open_slide(path, mpp=None)           -> Slide (pyramid as xarray/Dask, mpp, vendor)
    run(slide, out, model=None, **opts)  -> xarray.Dataset (density, counts, summary)
    count(slide, out, model=None, **opts) -> dict (the same run; returns summary.json's content
                                            without importing dask/xarray; what the CLI calls)
    count_each(jobs, model=None, **opts) -> iterator of (summary, error) per (slide, out)
    RunConfig(...)                       -> the run's options (frozen; ``**opts`` override fields)
    Layout(out)                          -> every path a run writes under ``out``
    synth_slide(out, format="ndpi", ...) -> SynthTruth (a synthetic slide + ground truth)
    load_model(name_or_path)             -> LoadedModel (module + card)
    train(data, out, TrainConfig(...))   -> path of the trained model card
    evaluate(model, data, split="test")  -> EvalResult
    detect_tissue(slide, mode)           -> TissueMask
    tune_allocator()                     -> bool (keep freed memory for reuse: faster CPU inference
                                            on glibc; the CLI applies it, call it first)

Package layout, in the order data flows: ``io`` (slides) -> ``tissue`` -> ``tiling`` -> ``runner``
(plan, tile task, executors) -> ``store`` (density Zarr, tile records) -> ``aggregate`` ->
``report``; ``models`` (architectures, cards), ``training`` and ``synth`` beside them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import WsicountError  # noqa: E402


def __getattr__(name: str):
    """Import heavy submodules lazily so ``import wsicount`` stays fast."""
    lazy = {
        "open_slide": ("io", "open_slide"),
        "Slide": ("io", "Slide"),
        "run": ("runner", "run"),
        "count": ("runner", "count"),
        "RunConfig": ("runner", "RunConfig"),
        "count_each": ("runner", "count_each"),
        "Layout": ("store", "Layout"),
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


__all__ = ["__version__", "WsicountError", "open_slide", "Slide", "run", "count", "count_each", "RunConfig", "Layout",
           "synth_slide", "load_model",
           "train", "TrainConfig", "evaluate", "detect_tissue", "tune_allocator"]
