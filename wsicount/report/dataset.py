"""The run's results as an xarray Dataset, labelled in µm (the density lazily, from the Zarr store)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..aggregate import Aggregate
from ..store import Layout
from ..tiling import Geometry

__all__ = ["results_dataset"]


def results_dataset(out: Path, tm, geom: Geometry, agg: Aggregate, summary: dict[str, Any], cells: dict[str, np.ndarray]):
    """Results as an xarray Dataset (density lazily from the Zarr store; imports dask and xarray)."""
    import dask.array as da
    import xarray as xr
    import zarr

    dens = da.from_zarr(zarr.open_array(str(Layout(out).density_level(0)), mode="r"))
    m = geom.model_mpp
    data = {
        "density": xr.DataArray(dens, dims=("y", "x"), coords={"y": (np.arange(dens.shape[0]) + 0.5) * m,
                                                              "x": (np.arange(dens.shape[1]) + 0.5) * m},
                                attrs={"units": "cells per pixel", "mpp": m}),
        "tissue": xr.DataArray(tm.mask, dims=("mask_y", "mask_x"),
                               coords={"mask_y": (np.arange(tm.mask.shape[0]) + 0.5) * tm.mpp0 * tm.scale_y,
                                       "mask_x": (np.arange(tm.mask.shape[1]) + 0.5) * tm.mpp0 * tm.scale_x}),
        "cell_y_um": xr.DataArray(cells["y_um"], dims=("cell",)),
        "cell_x_um": xr.DataArray(cells["x_um"], dims=("cell",)),
    }
    for g in agg.counts:
        gy, gx = f"grid{g:g}_y", f"grid{g:g}_x"
        coords = {gy: (np.arange(agg.counts[g].shape[0]) + 0.5) * g, gx: (np.arange(agg.counts[g].shape[1]) + 0.5) * g}
        data[f"counts_{g:g}um"] = xr.DataArray(agg.counts[g], dims=(gy, gx), coords=coords)
        data[f"tissue_mm2_{g:g}um"] = xr.DataArray(agg.tissue_mm2[g], dims=(gy, gx), coords=coords)
        if g in agg.cell_ci:  # the modelled error sd of each cell's count, and its interval
            lo, hi, sd = agg.cell_ci[g]
            data[f"count_sd_{g:g}um"] = xr.DataArray(sd, dims=(gy, gx), coords=coords)
            data[f"count_lo_{g:g}um"] = xr.DataArray(lo, dims=(gy, gx), coords=coords)
            data[f"count_hi_{g:g}um"] = xr.DataArray(hi, dims=(gy, gx), coords=coords)
    return xr.Dataset(data, attrs={k: summary[k] for k in ("total_cells", "total_cells_ci", "tissue_area_mm2", "cells_per_mm2", "complete")}
                      | {"summary": summary})
