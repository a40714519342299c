"""Time LD-DETR at the official QVHighlights shape, side by side with the official code.

    python benchmarks/bench_model.py [--official-src DIR] [--device cpu|cuda] [--rounds 5] [--loops 1,3]
        [--precisions fp32,bf16] [--threads N] [--clock wall|cpu] [--compile] [--steps-per-second N] [--profile]

DIR is a checkout of the official code (github.com/qingchen239/ld-detr, the folder holding `ld_detr/`), never
part of this repository. With it, both models are built at the same configuration with the same weights (the
official state dict through this package's converter), their outputs are compared, and their training steps
(forward with losses, backward, gradient clipping, AdamW) and inference forwards run interleaved on the same
batches, round by round, so that a busy machine slows all of them alike. The ratios are medians of the per-round
ratios; the "rounds" column gives the lowest and highest of them. The official Loop Decoder makes one pass; this
package's model is timed at each `--loops` count (1 = the official math, 3 = the paper's Loop Decoder).

Also printed: FLOPs per training step and per inference forward (torch.utils.flop_counter), the achieved
GFLOP/s next to a GEMM peak timed in the same rounds (2048^3, smaller where one GEMM of a dtype is slow: emulated
bf16 on CPUs without bf16 instructions runs at about 1 GFLOP/s), the floor (those FLOPs at that peak, nothing else)
and the ceiling (the official time over the floor: the best ratio a model of that FLOP count can reach), bf16
autocast speed-ups and losses against fp32, and the peak memory (CUDA: allocator peak per model; CPU: process
max RSS). `--profile` prints instead torch.profiler tables (sorted by self CPU time) of one training step and one
inference forward of this model.
The header names the memory allocator in use (a tcmalloc or jemalloc preloaded with LD_PRELOAD, or the C
library's malloc): on the CPU it changes both codes' times, the official code's most.
"""

import argparse
import contextlib
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from modeling_lddetr import LDDetrConfig, LDDetrModel

GEMM_SIZE = 2048  # the largest GEMM the peak is timed on
GEMM_SECONDS = 0.02  # a GEMM this slow is large enough to time: stop growing it


def make_batch(batch_size, clips, tokens, config, device, seed=0, padded=True):
    """Random features and labels; with `padded`, videos of clips-15..clips clips and queries of 8..tokens-1 tokens."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        "video_features": torch.randn(batch_size, clips, config.video_feature_dim, generator=generator),
        "video_attention_mask": torch.ones(batch_size, clips),
        "text_features": torch.randn(batch_size, tokens, config.text_feature_dim, generator=generator),
        "text_attention_mask": torch.ones(batch_size, tokens),
    }
    if padded:
        for b in range(batch_size):
            inputs["video_attention_mask"][b, clips - (b % 16) :] = 0
            inputs["text_attention_mask"][b, 8 + (b * 7) % (tokens - 8) :] = 0
    labels = []
    for b in range(batch_size):
        length = int(inputs["video_attention_mask"][b].sum())
        saliency = torch.zeros(length)
        saliency[10:20] = torch.arange(1, 11).float()
        labels.append(
            {
                "spans": torch.tensor([[0.2, 0.1], [0.6, 0.2]]),
                "saliency_scores": saliency,
                "saliency_pos_indices": torch.tensor([19, 15]),
                "saliency_neg_indices": torch.tensor([10, 40]),
            }
        )
    return {k: v.to(device) for k, v in inputs.items()}, labels


PRELOADED_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")


def memory_allocator(maps_text: str) -> str:
    """The malloc this process runs on, from the text of /proc/self/maps: a preloaded allocator library, or the C
    library's."""
    for fields in map(str.split, maps_text.splitlines()):
        path = fields[5] if len(fields) >= 6 else ""  # start-end perms offset device inode [path]
        if any(name in path.rsplit("/", 1)[-1] for name in PRELOADED_ALLOCATORS):
            return path
    return "the C library's malloc"


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class LDDetrRunner:
    """A training step and an inference forward of an `LDDetrModel`, optionally under bf16 autocast."""

    def __init__(self, model, optimizer, bf16, compile_model, device):
        self.model, self.optimizer, self.device = model, optimizer, device
        self.last_loss = None
        self.forward = torch.compile(model) if compile_model else model
        self.bf16 = bf16

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def train_step(self, batch, labels):
        self.model.train()
        with self.autocast():
            loss = self.forward(**batch, labels=labels).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.1)
        self.optimizer.step()
        self.last_loss = loss.detach()

    def inference(self, batch, grad=False):
        self.model.eval()
        with torch.set_grad_enabled(grad), self.autocast():
            self.forward(**batch)

    def eval_losses(self, batch, labels):
        self.model.eval()
        with torch.no_grad(), self.autocast():
            out = self.forward(**batch, labels=labels)
        return out.loss.item(), {k: v.item() for k, v in out.loss_dict.items()}


def adamw(model, device):
    # fused, as lddetr-train (TrainingArguments' default optimizer, adamw_torch_fused)
    return torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=1e-4,
        weight_decay=1e-4,
        fused=device.type in ("cpu", "cuda"),
    )


def gemm(dtype, device) -> tuple[Callable[[], torch.Tensor], int]:
    """A square GEMM of `dtype` and its size: 2048, or the first of 256, 512, ... that takes GEMM_SECONDS, so that
    an emulated dtype does not spend minutes on its peak."""
    size = 256
    while True:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        a @ b
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        if size >= GEMM_SIZE or time.perf_counter() - start >= GEMM_SECONDS:
            return (lambda: a @ b), size
        size *= 2


def interleaved(tasks, rounds, warmup, device, clock):
    """Run every task once per round, in turn (task(round index)); returns name -> seconds of the timed rounds,
    and name -> CUDA peak MiB."""
    times = {name: [] for name in tasks}
    peaks = dict.fromkeys(tasks, 0.0)
    for i in range(warmup + rounds):
        for name, fn in tasks.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            synchronize(device)
            start = clock()
            fn(i)
            synchronize(device)
            if i >= warmup:
                times[name].append(clock() - start)
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated() / 2**20)
    return times, peaks


def per_round_ratios(numerator, denominator) -> list[float]:
    return [n / d for n, d in zip(numerator, denominator)]


def ratio(numerator, denominator):
    """Median of the per-round ratios numerator / denominator."""
    return statistics.median(per_round_ratios(numerator, denominator))


def ratio_range(numerator, denominator) -> str:
    """Lowest and highest per-round ratio, "a-b": how far one run's rounds disagree."""
    ratios = per_round_ratios(numerator, denominator)
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def count_flops(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@contextlib.contextmanager
def dropout_disabled(*modules):
    """Every dropout probability (nn.Dropout modules and attention-weight dropout) set to 0, then restored."""
    saved = []
    for module in modules:
        for sub in module.modules():
            name = "p" if isinstance(sub, torch.nn.Dropout) else "dropout"
            if isinstance(getattr(sub, name, None), float):
                saved.append((sub, name, getattr(sub, name)))
                setattr(sub, name, 0.0)
    try:
        yield
    finally:
        for sub, name, value in saved:
            setattr(sub, name, value)


def official_outputs(out):
    return {
        "logits": out["pred_logits"],
        "pred_spans": out["pred_spans"],
        "saliency_scores": out["saliency_scores"],
        "aux_0_logits": out["aux_outputs"][0]["pred_logits"],
        "aux_0_pred_spans": out["aux_outputs"][0]["pred_spans"],
    }


def lddetr_outputs(out):
    return {
        "logits": out.logits,
        "pred_spans": out.pred_spans,
        "saliency_scores": out.saliency_scores,
        "aux_0_logits": out.auxiliary_outputs[0]["logits"],
        "aux_0_pred_spans": out.auxiliary_outputs[0]["pred_spans"],
    }


def max_relative_difference(ours: dict, official: dict) -> float:
    return max(abs(float(ours[k]) - float(official[k])) / max(abs(float(official[k])), 1e-12) for k in ours)


def compare_with_official(official, model, batch, labels, targets):
    """Eval outputs and losses, then train-mode losses with dropout off, of both models on one unpadded batch."""
    with torch.no_grad():
        theirs = official.forward(batch, training=False)
        _, their_losses = official.losses(theirs, targets)
        model.eval()
        ours = model(**batch, labels=labels)
    output_diff = max(
        (a - b).abs().max().item() for a, b in zip(lddetr_outputs(ours).values(), official_outputs(theirs).values())
    )
    eval_loss_diff = max_relative_difference(ours.loss_dict, their_losses)
    with torch.no_grad(), dropout_disabled(official.model, model):
        _, their_losses = official.losses(official.forward(batch, training=True), targets)
        model.train()
        ours = model(**batch, labels=labels)
    train_loss_diff = max_relative_difference(ours.loss_dict, their_losses)
    return output_diff, eval_loss_diff, train_loss_diff


def profile_tables(runner, batch, labels, rows):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runner.device.type == "cuda" else [])
    for name, fn in (
        ("training step", lambda: runner.train_step(batch, labels)),
        ("inference forward", lambda: runner.inference(batch)),
    ):
        fn()  # warm-up
        with profile(activities=activities) as prof:
            fn()
            synchronize(runner.device)
        print(f"\n{name} ({'bf16' if runner.bf16 else 'fp32'}, {runner.model.config.num_decoder_loops} decoder loops)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-src", help="root of a checkout of the official code (holds ld_detr/)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--clips", type=int, default=75)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--queue-length", type=int, default=65536)
    parser.add_argument("--loops", default="1,3", help="decoder loop counts of this package's model")
    parser.add_argument(
        "--precisions", default="fp32,bf16", help="fp32 and/or bf16 (autocast) for this package's model"
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed training rounds (inference: twice as many)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batches", type=int, default=3, help="distinct batches, used in turn")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time instead of wall time, steadier on a machine shared with other jobs "
        "(use with --threads 1)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile this package's model")
    parser.add_argument(
        "--steps-per-second", type=int, default=0, metavar="N", help="also run N training steps in a row per model"
    )
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables of this model and exit")
    parser.add_argument("--profile-rows", type=int, default=15)
    args = parser.parse_args()
    # the padded batches have videos of clips - 15 .. clips clips with labels up to clip 40, and 8 .. tokens - 1 tokens
    if args.clips < 56 or args.tokens < 9:
        parser.error(f"--clips must be at least 56 and --tokens at least 9, got {args.clips} and {args.tokens}")

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    loops = [int(n) for n in args.loops.split(",")]
    precisions = args.precisions.split(",")
    torch.manual_seed(0)
    shape = LDDetrConfig(queue_length=args.queue_length)
    batches = [make_batch(args.batch_size, args.clips, args.tokens, shape, device, seed=i) for i in range(args.batches)]

    official = None
    if args.official_src:
        from official_code import OfficialModel

        official = OfficialModel(
            args.official_src, device, shape.video_feature_dim, shape.text_feature_dim, args.queue_length
        )
        models = {n: official.lddetr_model(n) for n in loops}
    else:
        models = {
            n: LDDetrModel(LDDetrConfig(queue_length=args.queue_length, num_decoder_loops=n)).to(device) for n in loops
        }
    optimizers = {n: adamw(model, device) for n, model in models.items()}
    runners = {
        f"lddetr loops={n} {precision}": LDDetrRunner(
            models[n], optimizers[n], precision == "bf16", args.compile, device
        )
        for precision in precisions
        for n in loops
    }

    if args.profile:
        for runner in runners.values():
            profile_tables(runner, *batches[0], args.profile_rows)
        return

    print(
        f"device {device} "
        f"({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
        f"B={args.batch_size} L={args.clips} Dv={shape.video_feature_dim} N={args.tokens} Dt={shape.text_feature_dim} "
        f"queue={args.queue_length}, compile={args.compile}; {args.clock} clock, "
        f"medians of {args.rounds} interleaved rounds "
        f"after {args.warmup} warm-up"
    )
    if device.type == "cpu":
        maps = Path("/proc/self/maps")
        print(
            "memory allocator: "
            f"{memory_allocator(maps.read_text()) if maps.exists() else 'unknown (no /proc/self/maps)'}"
        )
    if official is not None:
        unpadded, unpadded_labels = make_batch(
            args.batch_size, args.clips, args.tokens, shape, device, seed=100, padded=False
        )
        targets = official.targets(unpadded_labels, args.clips, device)
        diffs = compare_with_official(
            official, models[1] if 1 in models else official.lddetr_model(1), unpadded, unpadded_labels, targets
        )
        print(
            "same weights as the official code, one decoder pass, unpadded batch: eval outputs max |diff| "
            f"{diffs[0]:.1e}, eval losses max rel. diff {diffs[1]:.1e}, "
            f"train losses (dropout 0) max rel. diff {diffs[2]:.1e}"
        )
    if "bf16" in precisions and "fp32" in precisions:
        for n in loops:
            fp32_total, fp32_terms = runners[f"lddetr loops={n} fp32"].eval_losses(*batches[0])
            bf16_total, bf16_terms = runners[f"lddetr loops={n} bf16"].eval_losses(*batches[0])
            worst = max(bf16_terms, key=lambda k: abs(bf16_terms[k] - fp32_terms[k]))
            print(
                f"bf16 vs fp32 losses, loops={n} (eval forward, padded batch): "
                f"total {bf16_total:.4f} vs {fp32_total:.4f} "
                f"(rel. {abs(bf16_total - fp32_total) / abs(fp32_total):.1e}); largest term difference {worst} "
                f"{bf16_terms[worst]:.4f} vs {fp32_terms[worst]:.4f}"
            )

    # FLOPs (and a first call of every model); the inference forwards are counted with autograd on, because
    # FlopCounterMode's module tracker fails on parameter views made under no_grad (same FLOPs)
    flops = {}
    targets = [official.targets(labels, args.clips, device) for _, labels in batches] if official else None
    if official is not None:
        flops["official"] = (
            count_flops(lambda: official.train_step(batches[0][0], targets[0])),
            count_flops(lambda: official.forward(batches[0][0], training=False)),
        )
    for name, runner in runners.items():
        flops[name] = (
            count_flops(lambda: runner.train_step(*batches[0])),
            count_flops(lambda: runner.inference(batches[0][0], grad=True)),
        )

    gemms, gemm_sizes = {}, {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        gemms[precision], gemm_sizes[precision] = gemm(dtype, device)
    results = {}
    for kind, rounds in (("train", args.rounds), ("inference", 2 * args.rounds)):
        # every task takes the round index and uses batch (round % batches)
        tasks = {f"gemm {p}": (lambda i, fn=gemms[p]: fn()) for p in dict.fromkeys(["fp32", *precisions])}
        if official is not None:
            if kind == "train":
                tasks["official"] = lambda i: official.train_step(
                    batches[i % len(batches)][0], targets[i % len(batches)]
                )
            else:
                tasks["official"] = lambda i: official.inference(batches[i % len(batches)][0])
        for name, runner in runners.items():
            if kind == "train":
                tasks[name] = lambda i, runner=runner: runner.train_step(*batches[i % len(batches)])
            else:
                tasks[name] = lambda i, runner=runner: runner.inference(batches[i % len(batches)][0])
        results[kind] = interleaved(tasks, rounds, args.warmup, device, clock)

    peak_of = {}
    for precision in dict.fromkeys(["fp32", *precisions]):
        gemm_times = results["train"][0][f"gemm {precision}"] + results["inference"][0][f"gemm {precision}"]
        peak_of[precision] = 2 * gemm_sizes[precision] ** 3 / statistics.median(gemm_times) / 1e9
    print(
        "GEMM peak (timed in the same rounds): "
        + ", ".join(f"{p} {g:.0f} GFLOP/s ({gemm_sizes[p]}^3)" for p, g in peak_of.items())
    )

    names = (["official"] if official else []) + list(runners)
    for kind, column in (("train", 0), ("inference", 1)):
        times, peaks = results[kind]
        title = "training step (fwd + losses + bwd + clip + AdamW)" if kind == "train" else "inference forward"
        print(f"\n{title}")
        header = (
            f"{'model':<22} {'ms':>8} {'x official':>10} {'rounds':>9} {'x fp32':>7} {'GFLOP':>7} "
            f"{'GFLOP/s':>8} {'% peak':>7} "
            f"{'floor ms':>8} {'ceiling':>7}"
        )
        print(header + (f" {'peak MiB':>9}" if device.type == "cuda" else ""))
        for name in names:
            precision = "bf16" if name.endswith("bf16") else "fp32"
            seconds = statistics.median(times[name])
            gflop = flops[name][column] / 1e9
            vs_official = f"{ratio(times['official'], times[name]):.2f}" if official else "-"
            spread = ratio_range(times["official"], times[name]) if official and name != "official" else "-"
            fp32_name = name.replace("bf16", "fp32")
            vs_fp32 = (
                f"{ratio(times[fp32_name], times[name]):.2f}" if precision == "bf16" and fp32_name in times else "-"
            )
            # the time of this row's FLOPs at the GEMM peak with nothing else, and the official time over it: the
            # ratio this FLOP count could reach at best on this machine
            floor = gflop / peak_of[precision]
            ceiling = f"{statistics.median(times['official']) / floor:.2f}" if official and name != "official" else "-"
            line = (
                f"{('official (1 pass) fp32' if name == 'official' else name):<22} {seconds * 1e3:8.1f} "
                f"{vs_official:>10} {spread:>9} {vs_fp32:>7} "
                f"{gflop:7.1f} {gflop / seconds:8.1f} {100 * gflop / seconds / peak_of[precision]:6.0f}% "
                f"{floor * 1e3:8.1f} {ceiling:>7}"
            )
            print(line + (f" {peaks[name]:9.0f}" if device.type == "cuda" else ""))
    print(
        "\nloss of the last timed training step: "
        + ", ".join(f"{name} {runner.last_loss.item():.4f}" for name, runner in runners.items())
    )
    if device.type != "cuda":
        print(f"peak process RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")

    if args.steps_per_second:
        print(f"\n{args.steps_per_second} training steps in a row:")
        steps = (
            {"official": lambda i: official.train_step(batches[i % len(batches)][0], targets[i % len(batches)])}
            if official
            else {}
        )
        steps.update(
            {
                name: (lambda i, runner=runner: runner.train_step(*batches[i % len(batches)]))
                for name, runner in runners.items()
            }
        )
        for name, fn in steps.items():
            synchronize(device)
            start = clock()
            for i in range(args.steps_per_second):
                fn(i)
            synchronize(device)
            print(f"{name:<22} {args.steps_per_second / (clock() - start):.2f} steps/s")


if __name__ == "__main__":
    main()
