"""The run's human- and machine-readable outputs, from the aggregate.

``summary``: summary.json's schema and the final writer; ``tables``: regions.csv, cells.csv,
cells.geojson, bad_tiles.csv and the count-map images; ``figures``: the slide picture and the
heat map (drawn with ``pictures``); ``html``: report.html; ``dataset``: the xarray Dataset.
Every file is written atomically, summary.json last: a summary on disk means a finished run.
"""

from __future__ import annotations

from .figures import SlideFigure, figures, for_heatmap, heatmap_figure, slide_figure, thumbnail
from .summary import OUTPUTS, build_summary, write_report
from .tables import (CELL_FIELDS, REGION_FIELDS, Tables, write_count_maps, write_tables, write_text_tables)

__all__ = ["SlideFigure", "figures", "for_heatmap", "heatmap_figure", "slide_figure", "thumbnail", "OUTPUTS",
           "build_summary", "write_report", "CELL_FIELDS", "REGION_FIELDS", "Tables", "write_count_maps",
           "write_tables", "write_text_tables", "results_dataset"]


def __getattr__(name: str):
    """The xarray Dataset builder, imported on use (it imports dask and xarray)."""
    if name == "results_dataset":
        from .dataset import results_dataset

        return results_dataset
    raise AttributeError(f"module 'wsicount.report' has no attribute {name!r}")
