"""Count a study of slides on a local Dask cluster (worker processes on this machine).

    python workflows/local_batch.py SLIDE [SLIDE ...] --out study/ [--workers 2] [--model NAME]
    python workflows/local_batch.py --synthetic 3 --out study/      # make 3 small demo slides first

Writes ``study/<slide>/`` per slide and ``study/study.csv``. A slide that fails is recorded
with its error and the others finish; rerunning resumes unfinished slides.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, optionally synthesize slides, and run the batch."""
    import wsicount
    from wsicount.batch import batch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slides", nargs="*", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default=None)
    ap.add_argument("--synthetic", type=int, default=0, help="synthesize N small slides into OUT/slides first")
    ap.add_argument("--size", type=int, default=3072)
    args = ap.parse_args(argv)
    slides = list(args.slides)
    for i in range(args.synthetic):
        p = args.out / "slides" / f"synthetic-{i}.ndpi"
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            wsicount.synth_slide(p, format="ndpi", size=(args.size, args.size), seed=100 + i)
        slides.append(p)
    rows = batch(slides, args.out, model=args.model, workers=args.workers, progress=False)
    for r in rows:
        print(f"{Path(r['slide']).name}: {r['status']} {r.get('total_cells', '')} {r.get('error', '')}")
    return 0 if all(r["status"] == "ok" for r in rows) else 9


if __name__ == "__main__":
    sys.exit(main())
