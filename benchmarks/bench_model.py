"""Time LD-DETR at the official QVHighlights shape: a training step and an inference forward.

    python benchmarks/bench_model.py [--device cpu|cuda] [--batch-size 32] [--queue-length 65536] [--repeats 10]
        [--bf16] [--compile]

Prints the median time of a full training step (forward with losses, backward, AdamW step) and of an inference
forward, and the peak memory (CUDA: allocator peak; CPU: process max RSS).
"""

import argparse
import resource
import statistics
import time

import torch

from modeling_lddetr import LDDetrConfig, LDDetrModel


def make_batch(batch_size, clips, tokens, config, device):
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "video_features": torch.randn(batch_size, clips, config.video_feature_dim, generator=generator),
        "video_attention_mask": torch.ones(batch_size, clips),
        "text_features": torch.randn(batch_size, tokens, config.text_feature_dim, generator=generator),
        "text_attention_mask": torch.ones(batch_size, tokens),
    }
    # realistic padding: videos of 60..75 clips, queries of 8..32 tokens
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


def timed(fn, device, repeats, warmup=2):
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--clips", type=int, default=75)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--queue-length", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    config = LDDetrConfig(queue_length=args.queue_length)
    model = LDDetrModel(config).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)
    inputs, labels = make_batch(args.batch_size, args.clips, args.tokens, config, device)
    runner = torch.compile(model) if args.compile else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def train_step():
        model.train()
        with autocast:
            loss = runner(**inputs, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()

    def inference():
        model.eval()
        with torch.inference_mode(), autocast:
            runner(**inputs)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train_time = timed(train_step, device, args.repeats)
    train_peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    infer_time = timed(inference, device, args.repeats)
    infer_peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None

    shape = f"B={args.batch_size} L={args.clips} Dv={config.video_feature_dim} N={args.tokens} Dt={config.text_feature_dim} queue={args.queue_length}"
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), {shape}, bf16={args.bf16}, compile={args.compile}")
    print(f"training step (fwd+loss+bwd+AdamW): median {train_time * 1e3:.1f} ms over {args.repeats}")
    print(f"inference forward:                  median {infer_time * 1e3:.1f} ms over {args.repeats}")
    if device.type == "cuda":
        print(f"peak GPU memory: training {train_peak:.0f} MiB, inference {infer_peak:.0f} MiB")
    else:
        print(f"peak process RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
