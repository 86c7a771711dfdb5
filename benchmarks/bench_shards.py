"""One raster over several prediction processes (shards of window rows, issue #12).

Generates (once, under ``--data``) a 4-band uint8 GeoTIFF of ``--size`` px a side, then predicts
it with ``--devices 1`` (the whole raster in one process) and with each of ``--workers`` processes
(``ilots.inference.distributed.predict_distributed``: the raster cut into shards of window rows,
parts assembled into the COG), in a fresh subprocess per run, alternating runs. Prints per count:
median wall time, speed-up over one process, peak RSS of the largest process (workers are children
of the run: ``RUSAGE_CHILDREN``), and whether the output is byte-identical to one process's.

    uv run python benchmarks/bench_shards.py --size 16384 --workers 2 4 [--model conv1x1|unet]

On a CPU machine the workers share its cores (``torch`` threads are split between them): the
speed-up shows what the sharding costs or gains there; on N GPUs each worker has its own.
Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench_predict import square_inputs

CHILD = """
import json, resource, sys, time
from pathlib import Path
from ilots.inference.distributed import predict_distributed
from ilots.inference.options import PredictOptions
from ilots.inference.runner import predict_orthos
from ilots.models.bundle import Segmenter
seg = Segmenter.load(Path(sys.argv[1]))
devices = int(sys.argv[4])
options = PredictOptions(window=512, overlap=64, batch_size=4, device="cpu", devices=devices, overwrite=True)
t0 = time.perf_counter()
if devices == 1:
    predict_orthos(seg, [Path(sys.argv[2])], Path(sys.argv[3]), options)
else:
    predict_distributed(seg, [Path(sys.argv[2])], Path(sys.argv[3]), options)
seconds = time.perf_counter() - t0
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "rss_mb": own, "worker_rss_mb": children}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--model", choices=["unet", "conv1x1"], default="conv1x1")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--data", default="/tmp/ilots-bench")
    args = parser.parse_args()
    data = Path(args.data)
    raster, bundle = square_inputs(data, args.size, args.model)
    counts = [1, *args.workers]
    times: dict[int, list[float]] = {n: [] for n in counts}
    rss: dict[int, float] = {}
    digests: dict[int, str] = {}
    for _ in range(args.runs):
        for n in counts:
            out = data / f"shards-{args.model}-{args.size}-{n}"
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(bundle), str(raster), str(out), str(n)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            times[n].append(figures["seconds"])
            rss[n] = max(rss.get(n, 0.0), figures["worker_rss_mb"] if n > 1 else figures["rss_mb"])
            digests[n] = hashlib.sha256((out / raster.name).read_bytes()).hexdigest()
    mpx = args.size * args.size / 1e6
    base = statistics.median(times[1])
    summary = []
    for n in counts:
        med = statistics.median(times[n])
        same = digests[n] == digests[1]
        print(
            f"{n} process(es): {med:.1f} s ({mpx / med:.2f} Mpx/s), speed-up {base / med:.2f}x, "
            f"peak RSS per process {rss[n]:.0f} MB, byte-identical to 1 process: {same}"
        )
        summary.append({"processes": n, "seconds": round(med, 2), "speedup": round(base / med, 2),
                        "peak_rss_mb": round(rss[n]), "identical": same})  # fmt: skip
    print(json.dumps({"size": args.size, "model": args.model, "runs": summary}))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
