"""A/B of the two kernel settings: a training step and an inference forward with kernels="fused" and "eager".

    python benchmarks/bench_kernels.py [--device cpu|cuda] [--batch-size 32] [--rounds 5] [--threads N]

One model at the official QVHighlights shape (3 decoder passes, dropout on) and its eager twin (the same weights),
timed in interleaved rounds on the same batch, so that a busy machine slows both alike. Prints each setting's
median time and the median and range of the per-round ratios eager / fused (> 1: fused is faster).
"""

import argparse
import copy
import statistics
import time

import torch
from bench_model import make_batch, synchronize

from modeling_lddetr import LDDetrConfig, LDDetrModel


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args()
    if args.rounds < 1 or args.batch_size < 1:
        parser.error(f"--rounds and --batch-size must be >= 1, got {args.rounds} and {args.batch_size}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    fused = LDDetrModel(LDDetrConfig()).to(device).train()
    eager = copy.deepcopy(fused)
    eager.set_kernels("eager")
    batch, labels = make_batch(args.batch_size, 75, 24, fused.config, device)
    optimizers = {model: torch.optim.AdamW(model.parameters(), lr=1e-4) for model in (fused, eager)}

    def train_step(model):
        model.train()
        optimizers[model].zero_grad(set_to_none=True)
        model(**batch, labels=labels).loss.backward()
        optimizers[model].step()

    def inference(model):
        model.eval()
        with torch.no_grad():
            model(**batch)

    print(f"device {device}, batch {args.batch_size}, {args.rounds} rounds, {torch.get_num_threads()} threads")
    print(f"{'':16}{'fused s':>10}{'eager s':>10}{'eager / fused':>16}{'rounds':>16}")
    for name, task in (("training step", train_step), ("inference", inference)):
        times = {fused: [], eager: []}
        for round_index in range(args.rounds + 1):  # round 0 warms up
            for model in (fused, eager) if round_index % 2 else (eager, fused):
                synchronize(device)
                start = time.perf_counter()
                task(model)
                synchronize(device)
                if round_index:
                    times[model].append(time.perf_counter() - start)
        ratios = [e / f for e, f in zip(times[eager], times[fused])]
        print(
            f"{name:16}{statistics.median(times[fused]):10.3f}{statistics.median(times[eager]):10.3f}"
            f"{statistics.median(ratios):16.2f}{f'{min(ratios):.2f}-{max(ratios):.2f}':>16}"
        )


if __name__ == "__main__":
    main()
