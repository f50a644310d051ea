"""Count a study of slides on a SLURM cluster through dask-jobqueue.

    pip install "wsicount[cluster]"          # adds dask-jobqueue
    python workflows/slurm_batch.py --manifest slides.csv --out /scratch/study \
        --jobs 8 --queue gpu --cores 8 --memory 32GB --walltime 04:00:00 [--gpus 1]

Each SLURM job runs one Dask worker process; the model is loaded once per worker and every
slide's tiles are spread over all workers. See workflows/README.md for the configuration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Start a SLURMCluster, scale it, and run wsicount.batch on it."""
    from dask_jobqueue import SLURMCluster

    from wsicount.batch import batch, read_manifest

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--queue", default=None)
    ap.add_argument("--account", default=None)
    ap.add_argument("--cores", type=int, default=8)
    ap.add_argument("--memory", default="32GB")
    ap.add_argument("--walltime", default="04:00:00")
    ap.add_argument("--gpus", type=int, default=0)
    ap.add_argument("--local-directory", default="$TMPDIR")
    args = ap.parse_args(argv)
    extra = [f"--gres=gpu:{args.gpus}"] if args.gpus else []
    cluster = SLURMCluster(
        queue=args.queue, account=args.account, cores=args.cores, processes=1, memory=args.memory,
        walltime=args.walltime, job_extra_directives=extra, local_directory=args.local_directory,
        # one worker process per job, all cores for torch's intra-op threads
        worker_extra_args=["--nthreads", "1"],
    )
    cluster.scale(jobs=args.jobs)
    try:
        rows = batch(read_manifest(args.manifest), args.out, model=args.model, scheduler=cluster.scheduler_address,
                     progress=False, device="cuda" if args.gpus else "cpu")
    finally:
        cluster.close()
    return 0 if all(r["status"] == "ok" for r in rows) else 9


if __name__ == "__main__":
    sys.exit(main())
