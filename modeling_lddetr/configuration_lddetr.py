"""LD-DETR configuration.

Defaults are the official QVHighlights model (SlowFast 2304 + CLIP 512 + 2 tef = 2818 video dims, CLIP text 512,
hidden 256, 8 heads, FFN 1024, 2/2/5/2/2 layers, 10 queries, queue 65536) and its loss weights.
"""

from transformers import PreTrainedConfig

# the plain PyTorch reference and the hand-written kernels (see LDDetrConfig, Kernels)
KERNELS = ("eager", "fused")


class LDDetrConfig(PreTrainedConfig):
    r"""
    Input features:
        video_feature_dim: width of the per-clip video features given to the model, tef columns included
            (2816 + 2 = 2818 for SlowFast + CLIP with tef).
        text_feature_dim: width of the per-token text features (512 for CLIP).
        audio_feature_dim: width of the optional per-clip audio features (0 = no audio; 2048 + 2 for PANN with tef).
            Audio is concatenated to the video features before the unimodal video encoder.
        clip_length: seconds per clip (2 for QVHighlights, 1 for Charades-STA). The model itself only uses it to
            reproduce the official highlight head arithmetic; the processor uses it for labels and seconds.
        max_video_clips / max_text_tokens: the lengths the official data pipeline truncates to (informational; None:
            no limit, as the official Charades-STA and TACoS runs).

    Architecture:
        hidden_size, num_attention_heads, ffn_dim: transformer width, heads and feed-forward width.
        num_t2v_encoder_layers: text-to-video encoder depth (the official `num_v2t_encoder_layers`).
        num_encoder1_layers, num_convolutional_blocks, num_encoder2_layers: the convolutional fuser.
        num_decoder_layers: layers of the anchor decoder inside the Loop Decoder.
        num_decoder_loops: passes of the Loop Decoder (paper: 3). The official release makes one pass whatever it
            says (early return), so converted official checkpoints use 1.
        num_queries: moment queries.
        unimodal_dropout, context_query_dropout, attention_dropout, activation_dropout, hidden_dropout: every
            dropout probability (unimodal encoders, V2T extractor scores, attention weights, inside the FFNs,
            on residual branches).

    Distill Align:
        queue_length, momentum, distillation_coefficient, temperature: the momentum-distillation alignment.
        gather_queue_across_processes: under torch.distributed, enqueue the momentum features of the global batch
            so that every rank holds the same queue.

    Fixes of the official code (defaults are correct; the converter sets the official behaviour where needed):
        official_highlight_slicing: reproduce the official highlight head, which maps the top-1 span to clips with
            the padded length and Python slice semantics (a negative start wraps), and runs its GRU over the padding.
        sync_batchnorm: synchronise the (masked) BatchNorm statistics of the convolutional blocks across processes.

    Losses:
        aux_loss: losses on every decoder layer, not only the last.
        moment_retrieval_loss: span, gIoU and label losses with the Hungarian matcher (False for TVSum, which only
            has saliency labels).
        span_loss_coefficient, giou_loss_coefficient, label_loss_coefficient, align_loss_coefficient,
        sim_loss_coefficient, saliency_loss_coefficient: weights of the loss terms.
        matcher_class_cost, matcher_span_cost, matcher_giou_cost: Hungarian matching costs.
        focal_alpha, focal_gamma: sigmoid focal loss of the foreground/background classifier.
        saliency_margin: margin of the pairwise saliency hinge loss.
        rank_contrastive_temperature: temperature of the rank-contrastive saliency loss.

        validate_inputs: check inputs for NaN/inf and empty masks (one host-device sync per forward).

    Kernels:
        kernels: "fused" (default) runs the hand-written kernels of the `fused_*.py` files where each one's
            predicate says it applies and plain PyTorch elsewhere; "eager" runs the plain PyTorch modules and
            formulas everywhere, the readable reference (`LDDetrModel.set_kernels` switches a built model). Both
            have the same parameters: a checkpoint of one loads into the other.
    """

    model_type = "lddetr"
    keys_to_ignore_at_inference = ["loss_dict", "auxiliary_outputs"]

    video_feature_dim: int = 2818
    text_feature_dim: int = 512
    audio_feature_dim: int = 0
    clip_length: float = 2.0
    max_video_clips: int | None = 75
    max_text_tokens: int | None = 32

    hidden_size: int = 256
    num_attention_heads: int = 8
    ffn_dim: int = 1024
    num_t2v_encoder_layers: int = 2
    num_encoder1_layers: int = 2
    num_convolutional_blocks: int = 5
    num_encoder2_layers: int = 2
    num_decoder_layers: int = 2
    num_decoder_loops: int = 3
    num_queries: int = 10

    unimodal_dropout: float = 0.5
    context_query_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    hidden_dropout: float = 0.1

    queue_length: int = 65536
    momentum: float = 0.995
    distillation_coefficient: float = 0.4
    temperature: float = 0.07
    gather_queue_across_processes: bool = True

    official_highlight_slicing: bool = False
    sync_batchnorm: bool = False

    aux_loss: bool = True
    moment_retrieval_loss: bool = True
    span_loss_coefficient: float = 10.0
    giou_loss_coefficient: float = 1.0
    label_loss_coefficient: float = 4.0
    align_loss_coefficient: float = 0.6
    sim_loss_coefficient: float = 0.6
    saliency_loss_coefficient: float = 1.0
    matcher_class_cost: float = 4.0
    matcher_span_cost: float = 10.0
    matcher_giou_cost: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    saliency_margin: float = 0.2
    rank_contrastive_temperature: float = 0.5

    validate_inputs: bool = True
    kernels: str = "fused"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.num_decoder_loops < 1:
            raise ValueError(
                f"num_decoder_loops must be >= 1, got {self.num_decoder_loops}: "
                "the Loop Decoder needs at least one pass."
            )
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})."
            )
        if self.hidden_size % 2 != 0:
            raise ValueError(
                f"hidden_size must be even (the anchor sine embedding splits it in two), got {self.hidden_size}."
            )
        for name in ("video_feature_dim", "text_feature_dim", "num_queries", "num_decoder_layers", "queue_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.audio_feature_dim < 0:
            raise ValueError(f"audio_feature_dim must be >= 0, got {self.audio_feature_dim}.")
        for name in (
            "num_t2v_encoder_layers",
            "num_encoder1_layers",
            "num_convolutional_blocks",
            "num_encoder2_layers",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {', '.join(map(repr, KERNELS))}, got {self.kernels!r}.")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum}.")

    @property
    def weight_dict(self) -> dict[str, float]:
        """Loss weights by the official loss names, auxiliary layers included (`_0`, `_1`, ...)."""
        weights = {}
        if self.moment_retrieval_loss:
            weights.update(
                loss_span=self.span_loss_coefficient,
                loss_giou=self.giou_loss_coefficient,
                loss_label=self.label_loss_coefficient,
            )
        weights.update(
            loss_align=self.align_loss_coefficient,
            loss_sim=self.sim_loss_coefficient,
            loss_saliency=self.saliency_loss_coefficient,
        )
        if self.moment_retrieval_loss and self.aux_loss:
            for layer in range(self.num_decoder_layers - 1):
                for name in ("loss_span", "loss_giou", "loss_label"):
                    weights[f"{name}_{layer}"] = weights[name]
        return weights


__all__ = ["LDDetrConfig"]
