"""Two prediction engines side by side: the same model on the same raster, alternated runs.

Runs ``predict_raster`` from two source trees (``--a`` and ``--b``, each a folder holding the
``ilots`` package, e.g. a checkout of main and a branch's ``src``) in fresh subprocesses, alternating
A, B, A, B ..., and prints the median time of each, their ratio, the peak RSS, and whether their
class (and probability) outputs are byte-identical, or how many pixels differ.

    uv run python benchmarks/bench_engines.py --a /path/to/main/src --b src --size 4096 \
        --model conv1x1 --runs 3

Not a test: figures depend on the machine (alternating keeps a drifting load out of the ratio).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench_predict import square_inputs

CHILD = """
import json, resource, sys, time
from pathlib import Path
from ilots.inference.options import PredictOptions
from ilots.inference.runner import predict_raster
from ilots.models.bundle import Segmenter
seg = Segmenter.load(Path(sys.argv[1]))
options = PredictOptions(window=512, overlap=64, batch_size=4, device="cpu")
out = Path(sys.argv[3])
t0 = time.perf_counter()
predict_raster(seg, Path(sys.argv[2]), out, options,
               probabilities=out.with_name("p-" + out.name) if sys.argv[4] == "1" else None)
use = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_s": use.ru_utime + use.ru_stime,
                  "rss_mb": use.ru_maxrss / 1024}))
"""


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def differing_pixels(a: Path, b: Path) -> int:
    import numpy as np
    import rasterio

    with rasterio.open(a) as x, rasterio.open(b) as y:
        return int(np.count_nonzero(x.read() != y.read()))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", required=True, help="folder holding the ilots package of engine A")
    parser.add_argument("--b", required=True, help="folder holding the ilots package of engine B")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--model", choices=["unet", "conv1x1"], default="conv1x1")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--probabilities", action="store_true")
    parser.add_argument("--data", default="/tmp/ilots-bench")
    args = parser.parse_args()
    data = Path(args.data)
    raster, bundle = square_inputs(data, args.size, args.model)
    times: dict[str, list[float]] = {"A": [], "B": []}
    cpu: dict[str, list[float]] = {"A": [], "B": []}
    rss: dict[str, float] = {}
    outs = {k: data / f"engine-{k}-{args.model}-{args.size}.tif" for k in times}
    for _ in range(args.runs):
        for key, src in (("A", args.a), ("B", args.b)):
            env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
            run = [sys.executable, "-c", CHILD, str(bundle), str(raster), str(outs[key])]
            done = subprocess.run(
                [*run, "1" if args.probabilities else "0"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            times[key].append(figures["seconds"])
            cpu[key].append(figures["cpu_s"])
            rss[key] = max(rss.get(key, 0.0), figures["rss_mb"])
    mpx = args.size * args.size / 1e6
    med = {k: statistics.median(v) for k, v in times.items()}
    for key in times:
        print(
            f"{key}: median {med[key]:.2f} s ({mpx / med[key]:.2f} Mpx/s), peak RSS {rss[key]:.0f} MB, "
            f"runs {[round(t, 2) for t in times[key]]}"
        )
    print(f"B / A speed: {med['A'] / med['B']:.2f}x")
    same = digest(outs["A"]) == digest(outs["B"])
    print(
        f"class rasters byte-identical: {same}"
        + (
            ""
            if same
            else f" ({differing_pixels(outs['A'], outs['B'])} pixels differ of {args.size * args.size})"
        )
    )
    if args.probabilities:
        pa, pb = (o.with_name("p-" + o.name) for o in outs.values())
        print(f"probability rasters: {differing_pixels(pa, pb)} values differ")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
