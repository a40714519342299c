"""Run the official LD-DETR code (a checkout of qingchen239/ld-detr the user fetched) beside this package.

Nothing of it is vendored: `load_official_code(folder)` imports `ld_detr.model` from the folder. Its CPU hazard is
patched at run time, without touching the checkout: `LD_DETR.forward` builds its decoder queries with a
hard-coded `.cuda()`, which `official_cuda_calls_stay_on(device)` turns into a no-op on CPU.
"""

import contextlib
import importlib
import sys
from argparse import Namespace
from pathlib import Path

import torch

from modeling_lddetr import LDDetrModel
from modeling_lddetr.convert_official_checkpoint import config_from_official_checkpoint, convert_official_state_dict


def official_options(video_feature_dim: int, text_feature_dim: int, queue_length: int) -> Namespace:
    """The official QVHighlights training options that `build_model` reads (its config.py defaults)."""
    return Namespace(
        a_feat_dir=None,
        t_feat_dim=text_feature_dim,
        v_feat_dim=video_feature_dim,  # tef included, as config.py adds it
        hidden_dim=256,
        num_queries=10,
        aux_loss=True,
        span_loss_type="l1",
        use_txt_pos=False,
        queue_length=queue_length,
        distillation_coefficient=0.4,
        num_v2t_encoder_layers=2,
        num_encoder1_layers=2,
        num_convolutional_blocks=5,
        num_encoder2_layers=2,
        num_decoder_layers=2,
        num_decoder_loops=3,  # ineffective: the official decoder returns inside its loop
        clip_length=2,
        span_loss_coef=10.0,
        giou_loss_coef=1.0,
        label_loss_coef=4.0,
        align_loss_coef=0.6,
        sim_loss_coef=0.6,
        lw_saliency=1.0,
        eos_coef=0.1,
        max_v_l=75,
        max_q_l=32,
        saliency_margin=0.2,
        set_cost_span=10.0,
        set_cost_giou=1.0,
        set_cost_class=4.0,
        dset_name="hl",
        device="cpu",
        grad_clip=0.1,
        ctx_mode="video_tef",
    )


def load_official_code(folder: str | Path):
    """Import the official `ld_detr.model` module from a checkout folder (the one holding `ld_detr/`)."""
    folder = Path(folder).resolve()
    if not (folder / "ld_detr" / "model.py").is_file():
        raise SystemExit(
            f"--official-src {folder}: no ld_detr/model.py there; give the root of a qingchen239/ld-detr checkout."
        )
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    return importlib.import_module("ld_detr.model")


@contextlib.contextmanager
def official_cuda_calls_stay_on(device: torch.device):
    """Make `Tensor.cuda()` a no-op while the official forward runs on the CPU."""
    if device.type == "cuda":
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def official_dropout_off(model: torch.nn.Module) -> None:
    """Every dropout of the official model at 0: its nn.Dropout modules, and the float `dropout` that both
    nn.MultiheadAttention and the official code's own MultiheadAttention (ld_detr/attention.py, the decoder's
    attentions) keep instead of a module."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0


OFFICIAL_FIXES = ("t2v-mask", "masked-global-features")


def official_fixes(model: torch.nn.Module, fixes: tuple[str, ...]) -> None:
    """Give the official model, at run time, the fixes of two of its bugs (reference §7.1), so that a training run
    can tell which of them a difference in outcome comes from:

    - "t2v-mask": the T2V layers' attention runs without the head-major `attn_mask` (§0.2). Built batch-major, that
      mask only masks text padding, which the layer's `key_padding_mask` masks already, so dropping it is the fix.
    - "masked-global-features": Distill Align's global features become means over the valid clips and tokens
      (§7.1.5), as this package computes them. The unimodal encoders' outputs are zeroed at the padding, so the
      official unmasked mean, once L2-normalised, equals the masked one. Downstream, padding stays masked as before
      (attention keys, the losses); only the convolutions and BatchNorm, which see padded clips, see zeros there.
    """
    unknown = set(fixes) - set(OFFICIAL_FIXES)
    if unknown:
        raise ValueError(f"unknown official fixes {sorted(unknown)}; expected some of {OFFICIAL_FIXES}")
    if "t2v-mask" in fixes:
        layers = [m for m in model.modules() if type(m).__name__.startswith("T2V_TransformerEncoderLayer")]
        if not layers:
            raise ValueError("the official model has no T2V_TransformerEncoderLayer to fix")
        for layer in layers:
            attention_forward = layer.self_attn.forward
            layer.self_attn.forward = lambda *args, _forward=attention_forward, **kwargs: _forward(
                *args, **{**kwargs, "attn_mask": None}
            )
    if "masked-global-features" in fixes:
        masks = {}
        model_forward = model.forward

        def forward_with_masks(*args, **kwargs):
            masks["video"], masks["text"] = kwargs["src_vid_mask"], kwargs["src_txt_mask"]
            return model_forward(*args, **kwargs)

        def zero_padding(kind):
            return lambda module, inputs, output: output * masks[kind].to(output.dtype)[..., None]

        model.forward = forward_with_masks
        for name, kind in (("video_encoder", "video"), ("momentum_video_encoder", "video"),
                           ("text_encoder", "text"), ("momentum_text_encoder", "text")):
            getattr(model, name).register_forward_hook(zero_padding(kind))


def lddetr_model_of(model: torch.nn.Module, options: Namespace, **config_changes) -> LDDetrModel:
    """This package's model with an official model's weights, buffers and queues (through the checkpoint
    converter); `config_changes` set fields of the converted config (e.g. the dropouts)."""
    checkpoint = {"model": model.state_dict(), "opt": options}
    config = config_from_official_checkpoint(checkpoint)
    config.update(config_changes)
    ours = LDDetrModel(config)
    ours.load_state_dict(convert_official_state_dict(checkpoint["model"]), strict=True)
    return ours


class OfficialModel:
    """The official model and criterion, with a training step and an inference forward like the official loop."""

    def __init__(
        self, folder: str | Path, device: torch.device, video_feature_dim: int, text_feature_dim: int, queue_length: int
    ):
        module = load_official_code(folder)
        self.options = official_options(video_feature_dim, text_feature_dim, queue_length)
        self.model, self.criterion = module.build_model(self.options)
        self.model.to(device)
        self.criterion.to(device)
        self.device = device
        # as the official setup_model: AdamW over the requires_grad parameters (not the momentum encoders)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4
        )

    def lddetr_model(self, num_decoder_loops: int) -> LDDetrModel:
        """This package's model with the same weights, buffers and queues (through the checkpoint converter)."""
        return lddetr_model_of(self.model, self.options, num_decoder_loops=num_decoder_loops).to(self.device)

    @staticmethod
    def inputs(batch: dict) -> dict:
        return {
            "src_txt": batch["text_features"],
            "src_txt_mask": batch["text_attention_mask"],
            "src_vid": batch["video_features"],
            "src_vid_mask": batch["video_attention_mask"],
        }

    @staticmethod
    def targets(labels: list[dict], clips: int, device: torch.device) -> dict:
        saliency = torch.zeros(len(labels), clips)
        for b, label in enumerate(labels):
            saliency[b, : label["saliency_scores"].shape[0]] = label["saliency_scores"]
        return {
            "span_labels": [{"spans": label["spans"].to(device)} for label in labels],
            "saliency_pos_labels": torch.stack([label["saliency_pos_indices"] for label in labels]).to(device),
            "saliency_neg_labels": torch.stack([label["saliency_neg_indices"] for label in labels]).to(device),
            "saliency_all_labels": saliency.to(device),
        }

    def forward(self, batch: dict, training: bool) -> dict:
        self.model.train(training)
        self.criterion.train(training)
        with official_cuda_calls_stay_on(self.device):
            # epoch_i=1: no distillation warm-up, as this package's default
            return self.model(**self.inputs(batch), epoch_i=1, is_training=training)

    def losses(self, outputs: dict, targets: dict) -> tuple[torch.Tensor, dict]:
        loss_dict = self.criterion(outputs, targets)
        weights = self.criterion.weight_dict
        return sum(loss_dict[k] * weights[k] for k in loss_dict if k in weights), loss_dict

    def train_step(self, batch: dict, targets: dict) -> None:
        loss, _ = self.losses(self.forward(batch, training=True), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.options.grad_clip)
        self.optimizer.step()

    def inference(self, batch: dict) -> None:
        with torch.no_grad():  # as the official inference.py
            self.forward(batch, training=False)
