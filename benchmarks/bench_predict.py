"""Benchmark of streaming prediction: end-to-end throughput against the forward pass alone, and peak memory.

For every raster size it generates (once, windowed, under ``--data``) a 4-band uint8 GeoTIFF, then in a
fresh subprocess per size (so that peak resident memory is that size's alone):

* end-to-end: ``predict_raster`` (read, forward, blend, write, COG) on the raster, in raster Mpx/s;
* forward-only: the same model on in-memory batches of the same window and batch size, already
  normalized (``prepare``: the reader threads' work), timed per batch (median of ``--forward-batches``)
  and scaled to the number of batches the raster needs: the throughput the hardware allows if reading,
  normalizing, blending and writing cost nothing, in raster Mpx/s;
* their ratio, and the subprocess's peak resident memory (``ru_maxrss``).

The model is the demo U-Net (smp, resnet18 encoder, decoder [128, 64, 32, 16, 16]), random weights
(``--encoder resnet34``: another smp encoder).
``--model conv1x1`` swaps it for a 1x1 convolution to measure the I/O path and memory alone.

    uv run python benchmarks/bench_predict.py --sizes 4096 16384 [--height 2048] [--device cuda]
        [--precision fp32 bf16] [--workers 1 2]

``--repeat N`` (default 3) predicts the raster N times in each process and reports the median (the
steady state of a folder of orthophotos: the first prediction of a raster size also grows the
allocator's heaps); ``--rounds R`` runs every size and worker count R times, alternated, and prints
the medians over the rounds (this machine's load drifts: compare figures from one alternated run).

By default a 1024 px raster is predicted first, untimed (compiled loops loaded, GDAL and torch
initialised: the steady state of a folder of orthophotos); ``--no-warm-up`` times the first one.
``--workers N``: the run may use N cores (CPU affinity), with N torch threads, N reader threads and
GDAL's N threads: the scaling of the data path with cores.

Prints one line per size and precision, and a JSON summary. Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the ilots command sets it (ilots.pipeline.cli)

BANDS, CLASSES = 4, ["background", "tree", "water", "roof"]
UNET = {
    "_target_": "segmentation_models_pytorch.Unet",
    "encoder_name": "resnet18",
    "encoder_weights": None,
    "decoder_channels": [128, 64, 32, 16, 16],
    "in_channels": BANDS,
    "classes": len(CLASSES),
}
CONV1X1 = {
    "_target_": "torch.nn.Conv2d",
    "in_channels": BANDS,
    "out_channels": len(CLASSES),
    "kernel_size": 1,
}


def make_raster(path: Path, height: int, width: int, block: int = 1024) -> Path:
    """A smooth random-ish 4-band uint8 orthophoto, written block row by block row (low memory)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": BANDS,
        "dtype": "uint8",
        "crs": "EPSG:2154",
        "transform": from_origin(841800.0, 6519400.0, 0.2, 0.2),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "photometric": "RGB",
    }
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, height, block):
            h = min(block, height - row)
            y, x = np.mgrid[row : row + h, 0:width].astype(np.float32)
            for b in range(BANDS):
                wave = 100 + 60 * np.sin(x / (37 + 11 * b)) * np.cos(y / (53 + 7 * b))
                noise = rng.integers(0, 40, (h, width), dtype=np.uint8)
                dst.write((wave + noise).astype(np.uint8), b + 1, window=Window(0, row, width, h))
    tmp.rename(path)
    return path


def make_bundle(folder: Path, net: dict) -> Path:
    """A model bundle with random weights (seeded)."""
    import torch

    from ilots.models.bundle import Segmenter, make_meta
    from ilots.models.nets import build_network

    if (folder / "ilots-model.json").is_file():
        return folder
    torch.manual_seed(0)
    stats = {"mean": [110.0] * BANDS, "std": [40.0] * BANDS}
    meta = make_meta(net, CLASSES, [f"b{i}" for i in range(BANDS)], stats, 512)
    Segmenter(build_network(net), meta).save(folder)
    return folder


def model_bundle(data: Path, model: str, encoder: str = "resnet18") -> Path:
    """The bundle of ``model`` (``unet`` with ``encoder``, or ``conv1x1``) under ``data``, made once."""
    if model != "unet":
        return make_bundle(data / f"model-{model}", CONV1X1)
    if encoder == UNET["encoder_name"]:
        return make_bundle(data / "model-unet", UNET)  # the folder earlier runs made
    return make_bundle(data / f"model-unet-{encoder}", {**UNET, "encoder_name": encoder})


def square_inputs(data: Path, size: int, model: str) -> tuple[Path, Path]:
    """A ``size`` px square orthophoto and the bundle of ``model`` under ``data``, made once."""
    return make_raster(data / f"ortho-{size}x{size}.tif", size, size), model_bundle(data, model)


def child(args: argparse.Namespace) -> None:
    """One measurement in this process: end-to-end, then forward-only; prints a JSON line."""
    import torch

    import ilots.inference.runner
    from ilots.inference.forward import forward, resolve_device
    from ilots.inference.grid import WindowGrid
    from ilots.inference.memory import keep_freed_memory
    from ilots.inference.options import PredictOptions
    from ilots.inference.runner import predict_raster
    from ilots.models.bundle import Segmenter

    keep_freed_memory()  # as predict_raster sets it: the forward-only batches under the same allocator
    if args.workers:  # this many cores for everything: torch's threads, reader threads, GDAL's
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.workers])
        torch.set_num_threads(args.workers)
    segmenter = Segmenter.load(Path(args.bundle)).to(resolve_device(args.device))
    raster = Path(args.raster)
    out = Path(args.out)
    import rasterio

    with rasterio.open(raster) as src:
        height, width = src.height, src.width
    grid = WindowGrid(height, width, args.window, args.overlap)
    n_batches = -(-len(grid.keys()) // args.batch_size)
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 255, (args.batch_size, BANDS, *grid.size), dtype=np.uint8)
    batch = segmenter.prepare(raw)  # normalized: the reader threads' work, not the model's
    sync = torch.cuda.synchronize if segmenter.device.type == "cuda" else (lambda: None)

    def forward_times(n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            forward(segmenter, batch, tta=False, precision=args.precision)
            sync()
            times.append(time.perf_counter() - t0)
        return times

    forward_times(1)  # warm-up (allocator, kernels)
    # Half the forward-only batches before the end-to-end run, half after: load drift hits both alike.
    times = forward_times(max(1, min(args.forward_batches, n_batches) // 2))
    in_run: list[float] = []

    def timed_forward(*a: object, **kw: object) -> np.ndarray:
        t0 = time.perf_counter()
        out = forward(*a, **kw)
        in_run.append(time.perf_counter() - t0)
        return out

    options = PredictOptions(
        window=args.window,
        overlap=args.overlap,
        batch_size=args.batch_size,
        precision=args.precision,
        readers=args.workers or 2,
    )
    if args.warm_up:  # compiled loops loaded, GDAL and torch initialised: the steady state a folder sees
        small = make_raster(raster.with_name("warm-up-1024.tif"), 1024, 1024)
        predict_raster(segmenter, small, out / "warm-up.tif", options)
    ilots.inference.runner.forward = timed_forward

    runs = []
    for _ in range(args.repeat):  # the steady state of a folder of orthophotos: the median of these
        start = time.perf_counter()
        predict_raster(
            segmenter,
            raster,
            out / "classes.tif",
            options,
            probabilities=out / "probabilities.tif" if args.probabilities else None,
        )
        sync()
        runs.append(time.perf_counter() - start)
    end_to_end_s = statistics.median(runs)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    ilots.inference.runner.forward = forward
    times += forward_times(max(1, min(args.forward_batches, n_batches) - len(times)))
    forward_s = statistics.median(times) * n_batches
    mpx = height * width / 1e6
    print(
        json.dumps(
            {
                "raster": f"{height}x{width}",
                "windows": len(grid.keys()),
                "batches": n_batches,
                "end_to_end_s": round(end_to_end_s, 3),
                "end_to_end_runs_s": [round(t, 3) for t in runs],
                "end_to_end_mpx_s": round(mpx / end_to_end_s, 4),
                "forward_only_s": round(forward_s, 2),
                "forward_only_mpx_s": round(mpx / forward_s, 4),
                "forward_window_mpx_s": round(
                    args.batch_size * np.prod(grid.size) / 1e6 / statistics.median(times), 4
                ),
                "ratio": round(forward_s / end_to_end_s, 3),
                "forward_busy_in_run": round(sum(in_run) / sum(runs), 3),
                "peak_rss_mb": round(peak_rss_mb, 1),
                "device": str(segmenter.device),
                "precision": args.precision,
                "torch_threads": torch.get_num_threads(),
                "workers": args.workers or len(os.sched_getaffinity(0)),
            }
        )
    )


def at_least_one(text: str) -> int:
    """An argument that counts runs: 1 or more."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number, 1 or more")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384], help="raster widths (px)")
    parser.add_argument("--height", type=int, help="raster height (default: square)")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32"])
    parser.add_argument("--model", choices=["unet", "conv1x1"], default="unet")
    parser.add_argument(
        "--encoder", default="resnet18", help="the U-Net's smp encoder (resnet34: the issue's GPU check)"
    )
    parser.add_argument("--probabilities", action="store_true")
    parser.add_argument(
        "--no-warm-up",
        dest="warm_up",
        action="store_false",
        help="time the first prediction of the process (by default a 1024 px one runs first, untimed)",
    )
    parser.add_argument("--forward-batches", type=int, default=7)
    parser.add_argument(
        "--repeat",
        type=at_least_one,
        default=3,
        help="end-to-end predictions per process (their median is reported)",
    )
    parser.add_argument(
        "--rounds",
        type=at_least_one,
        default=1,
        help="run every size and worker count this many times, alternated (medians over the rounds)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[0],
        help="cores per run (torch threads, reader threads, GDAL's threads; 0: all, 2 readers)",
    )
    parser.add_argument("--data", default="/tmp/ilots-bench")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--raster", help=argparse.SUPPRESS)
    parser.add_argument("--bundle", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.precision, args.workers = args.precision[0], args.workers[0]
        child(args)
        return
    data = Path(args.data)
    bundle = model_bundle(data, args.model, args.encoder)
    results: dict[tuple[int, str, int], list[dict[str, object]]] = {}
    for _ in range(args.rounds):  # alternated: the machine's drift hits every configuration alike
        for size in args.sizes:
            height = args.height or size
            raster = make_raster(data / f"ortho-{height}x{size}.tif", height, size)
            for precision, workers in [(p, w) for p in args.precision for w in args.workers]:
                out = data / f"out-{height}x{size}-{args.model}-{precision}-{workers}"
                cmd = [sys.executable, __file__, "--child", "--raster", str(raster), "--bundle", str(bundle)]
                cmd += ["--out", str(out), "--window", str(args.window), "--overlap", str(args.overlap)]
                cmd += ["--batch-size", str(args.batch_size), "--device", args.device]
                cmd += ["--precision", precision, "--forward-batches", str(args.forward_batches)]
                cmd += ["--workers", str(workers), "--repeat", str(args.repeat)]
                cmd += ["--probabilities"] if args.probabilities else []
                cmd += [] if args.warm_up else ["--no-warm-up"]
                line = (
                    subprocess.run(cmd, check=True, capture_output=True, text=True)
                    .stdout.strip()
                    .splitlines()[-1]
                )
                result = {"model": args.model, **json.loads(line)}
                results.setdefault((size, precision, workers), []).append(result)
                print(
                    f"{result['raster']} {args.model} {precision} {result['workers']} worker(s): "
                    f"end-to-end {result['end_to_end_mpx_s']:.3f} "
                    f"Mpx/s (runs {result['end_to_end_runs_s']} s), forward-only "
                    f"{result['forward_only_mpx_s']:.3f} Mpx/s, ratio {result['ratio']:.2f}, "
                    f"model busy {result['forward_busy_in_run']:.2f} of the run, "
                    f"peak RSS {result['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    if args.rounds > 1:
        print("medians over the rounds:")
        for (size, precision, workers), rounds in results.items():

            def median(key: str, rounds: list[dict[str, object]] = rounds) -> float:
                return statistics.median(float(r[key]) for r in rounds)  # type: ignore[arg-type]

            print(
                f"  {size} px {precision} {workers or 'all'} worker(s): end-to-end "
                f"{median('end_to_end_mpx_s'):.2f} Mpx/s, forward-only {median('forward_only_mpx_s'):.2f}, "
                f"ratio {median('ratio'):.2f}, peak RSS {median('peak_rss_mb'):.0f} MB "
                f"({min(float(r['peak_rss_mb']) for r in rounds):.0f}-"  # type: ignore[arg-type]
                f"{max(float(r['peak_rss_mb']) for r in rounds):.0f})",  # type: ignore[arg-type]
                flush=True,
            )
    print(json.dumps([r for rounds in results.values() for r in rounds], indent=2))


if __name__ == "__main__":
    main()
