"""Training throughput: the real data pipeline against the same model fed in-memory batches.

    uv run python benchmarks/bench_train.py [--data chips|windows] [--steps 20] [--repeats 3]

Prints images/s for both and their ratio (median of the repeats, measured alternately in one run).
The target is a ratio of at least 0.90: the data pipeline must not be the bottleneck. Uses the
default configuration (conf/) for model, batch size, workers and augmentation; ``--data windows``
measures random windows read from the orthophotos (torchgeo samplers) instead of pre-cut chips.
Run it in the project after `dvc repro tiles`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from itertools import cycle, islice
from pathlib import Path

import torch

from ilots.data.chips import ChipDataModule
from ilots.models.losses import CrossEntropyLoss
from ilots.models.nets import build_net
from ilots.pipeline.config import compose, to_dict
from ilots.pipeline.train import build_datamodule


def timed_steps(net: torch.nn.Module, batches, steps: int) -> float:  # type: ignore[no-untyped-def]
    """Images per second over ``steps`` optimizer steps (after one warm-up step)."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = CrossEntropyLoss()
    iterator = iter(batches)
    images, start = 0, 0.0
    for step in range(steps + 1):
        batch = next(iterator)
        if step == 1:
            start = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(net(batch["image"]), batch["mask"]).backward()
        optimizer.step()
        images += len(batch["image"]) if step else 0
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="chips", choices=["chips", "windows"], help="training sampling")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = compose([f"data={args.data}"])
    dm = build_datamodule(cfg, Path.cwd())
    net, _ = build_net(to_dict(cfg.model), dm.in_channels, len(cfg.classes))
    net.train()
    first = next(iter(dm.train_dataloader()))
    synthetic = [{"image": torch.randn_like(first["image"]), "mask": first["mask"].clone()} for _ in range(4)]
    real_rates, synthetic_rates = [], []
    for _ in range(args.repeats):
        real_rates.append(timed_steps(net, cycle_loader(dm), args.steps))
        synthetic_rates.append(timed_steps(net, islice(cycle(synthetic), args.steps + 1), args.steps))
    real, fake = statistics.median(real_rates), statistics.median(synthetic_rates)
    n = len(dm.dataset("train"))
    print(f"data={args.data}: {n} train samples per epoch of {dm.tile_size} px, {dm.in_channels} bands")
    print(f"model: {cfg.model._target_} {cfg.model.encoder_name}, batch {cfg.data.batch_size}, "
          f"workers {cfg.data.num_workers}, torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"real data pipeline : {real:7.2f} images/s  (runs: {', '.join(f'{r:.2f}' for r in real_rates)})")
    print(
        f"in-memory batches  : {fake:7.2f} images/s  (runs: {', '.join(f'{r:.2f}' for r in synthetic_rates)})"
    )
    print(f"ratio real / memory: {real / fake:.3f}  (target >= 0.90)")


def cycle_loader(dm: ChipDataModule):  # type: ignore[no-untyped-def]
    """Train batches forever, epoch after epoch."""
    epoch = 0
    while True:
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        yield from loader
        epoch += 1


if __name__ == "__main__":
    main()
