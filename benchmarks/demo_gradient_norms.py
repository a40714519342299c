"""Gradient norms of each loss term on demo batches, at initialisation: why the official clip stalls the demo.

    python benchmarks/demo_gradient_norms.py [--seed 42] [--batches 4] [--max-grad-norm 0.1] [--config-overrides ...]

For a few batches of the demo training split (the demo preset's model, training mode, distillation warmed up),
prints the gradient norm of the moment-retrieval terms (span, gIoU, label, every decoder layer), the saliency term
and the Distill Align terms (align, sim), each per top-level module, then the norm of the total loss's gradient,
the factor that clipping at `--max-grad-norm` scales it by, and what is left of the decoder's gradients after it
(their RMS, beside AdamW's epsilon); and the highlight head's gate S = G'v V'^T on the clips (paper Eq. 36), whose
size sets how much the saliency, the loss with the largest gradient, depends on the predicted top-1 moment.
"""

import argparse
import statistics

import torch

from hub_datasets import load_lddetr_dataset
from hub_datasets.demo import demo_dataset_path
from modeling_lddetr import LDDetrDataCollator, LDDetrModel, LDDetrProcessor
from training_scripts.presets import PRESETS
from training_scripts.train import model_config_for, parse_config_overrides

GROUPS = {"moment retrieval": ("loss_span", "loss_giou", "loss_label"), "saliency": ("loss_saliency",),
          "distill align": ("loss_align", "loss_sim")}


def highlight_gate(model: LDDetrModel, batch: dict) -> torch.Tensor:
    """S (B, L): the GRU summary of each sample's top-1 moment dotted with every clip's unimodal video feature, read
    where the head reads it (after the moment, or with `official_highlight_slicing` after the padded length)."""
    head, captured = model.highlight_detection_head, {}
    hooks = [head.register_forward_hook(lambda m, inputs, out: captured.update(inputs=inputs)),
             head.gru.register_forward_hook(lambda m, inputs, out: captured.update(states=out[0]))]
    with torch.no_grad():
        model(**batch)
    for hook in hooks:
        hook.remove()
    logits, spans, _, video, video_mask = captured["inputs"]
    states = captured["states"]
    if head.official_slicing:
        read_at = torch.full((states.shape[0],), states.shape[1] - 1)
    else:
        read_at = (head._moment_clip_range(logits.float(), spans.float(), video_mask)[1] - 1).clamp(min=0)
    summary = states[torch.arange(states.shape[0]), read_at]  # (B, d)
    return torch.einsum("bd,bld->bl", summary, video)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--max-grad-norm", type=float, default=0.1)
    parser.add_argument("--config-overrides", help="model config fields over the demo preset's, as lddetr-train's")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    queries, videos, info = load_lddetr_dataset(str(demo_dataset_path()))
    processor = LDDetrProcessor.from_dataset_info(info)
    collator = LDDetrDataCollator(processor, videos, seed=args.seed)
    overrides = dict(PRESETS["demo"]["model"], **parse_config_overrides(args.config_overrides))
    model = LDDetrModel(model_config_for(processor, **overrides))
    model.train()
    model.set_training_progress(1.0)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    batch_size = PRESETS["demo"]["training"]["per_device_train_batch_size"]
    norms, factors, decoder_rms = {g: [] for g in GROUPS}, [], []
    for b in range(args.batches):
        batch = collator([queries["train"][i] for i in range(b * batch_size, (b + 1) * batch_size)])
        batch.pop("meta")
        out = model(**batch)
        for group, prefixes in GROUPS.items():
            weights = model.config.weight_dict
            loss = sum(weights[k] * v for k, v in out.loss_dict.items() if k.startswith(prefixes))
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            per_module = {}
            for (name, _), grad in zip(named, grads):
                if grad is not None:
                    per_module[name.split(".")[0]] = per_module.get(name.split(".")[0], 0.0) + float(grad.pow(2).sum())
            norms[group].append((sum(per_module.values()) ** 0.5, {k: v**0.5 for k, v in per_module.items()}))
        grads = torch.autograd.grad(out.loss, params, allow_unused=True)
        total = float(torch.sqrt(sum(g.pow(2).sum() for g in grads if g is not None)))
        factor = min(1.0, args.max_grad_norm / total)
        factors.append((total, factor))
        decoder = [g for (name, _), g in zip(named, grads) if g is not None and name.startswith("loop_decoder")]
        decoder_rms.append(factor * float(torch.cat([g.flatten() for g in decoder]).pow(2).mean().sqrt()))

    print(f"demo preset model, seed {args.seed}, {args.batches} training batches of {batch_size}, at initialisation\n")
    print(f"{'loss terms':18s} {'gradient norm (median)':>24s}   per module (first batch)")
    for group, values in norms.items():
        modules = ", ".join(f"{k} {v:.3g}" for k, v in values[0][1].items())
        print(f"{group:18s} {statistics.median(v[0] for v in values):24.4g}   {modules}")
    print(f"\ntotal loss: gradient norm median {statistics.median(t for t, _ in factors):.4g}; clipping at "
          f"{args.max_grad_norm:g} scales it by {statistics.median(f for _, f in factors):.3g} (median)")
    print(f"decoder gradients after clipping: RMS {statistics.median(decoder_rms):.3g} per element (AdamW eps 1e-08)")
    batch = collator([queries["train"][i] for i in range(32)])
    batch.pop("meta")
    gate = highlight_gate(model, batch)
    print(f"highlight gate S on 32 samples: mean |S| {gate.abs().mean():.3g}, its std over a video's clips "
          f"{gate.std(dim=1).mean():.3g}, max |S| {gate.abs().max():.3g} (the clips' memory is scaled by 1 + S)")


if __name__ == "__main__":
    main()
