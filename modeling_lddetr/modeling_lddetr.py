"""LD-DETR: Loop Decoder DEtection TRansformer for video moment retrieval and highlight detection
(arXiv 2501.10787).

Data flow (B videos of L clips, N query tokens, d = hidden size, Q queries):

    video (B, L, Dv) --UnimodalEncoder--> V' (B, L, d) --+
    text  (B, N, Dt) --UnimodalEncoder--> T' (B, N, d) --+--> DistillAlign (masked global features,
                                                         |    momentum encoders, queues) -> loss_align, loss_sim
                                                         +--> ConvolutionalFuser -> memory (B, L, d)
    memory --LoopDecoder (anchors, num_decoder_loops passes)--> hidden states (layers, B, Q, d)
           --MomentRetrievalHead--> logits (B, Q, 2), spans (B, Q, 2)
    memory, V', top-1 span --HighlightDetectionHead--> saliency (B, L)
"""

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.utils import ModelOutput

from .attention import MultiheadAttention
from .configuration_lddetr import KERNELS, LDDetrConfig
from .convolutional_fuser import ConvolutionalFuser, EncoderLayer, T2VEncoderLayer, V2TExtractor
from .distill_align import DistillAlign, MomentumEncoder
from .loop_decoder import LoopDecoder
from .loss_lddetr import LDDetrLoss
from .position_encoding import VideoPositionEmbedding
from .prediction_heads import HighlightDetectionHead, MomentRetrievalHead
from .unimodal_encoder import UnimodalEncoder

QUEUE_KEYS = ("distill_align.video_queue", "distill_align.text_queue", "distill_align.queue_ptr")

# state-dict keys of folders saved by earlier versions of this package, which used the official names
# (pattern of the old key -> the new part): from_pretrained renames them on load, the converter through them
RENAMED_KEYS = {
    r"^anchor_embed\.": "loop_decoder.anchor_embed.",
    r"^distill_align\.h\.": "distill_align.predictor.",
    r"^distill_align\.temp$": "distill_align.temperature",
    r"\.v2t_extractor\.w4C$": ".v2t_extractor.clip_score_weight",
    r"\.v2t_extractor\.w4Q$": ".v2t_extractor.token_score_weight",
    r"\.v2t_extractor\.w4mlu$": ".v2t_extractor.clip_token_score_weight",
    r"\.sa_qcontent_proj\.": ".self_attn_query_content_proj.",
    r"\.sa_qpos_proj\.": ".self_attn_query_pos_proj.",
    r"\.sa_kcontent_proj\.": ".self_attn_key_content_proj.",
    r"\.sa_kpos_proj\.": ".self_attn_key_pos_proj.",
    r"\.sa_v_proj\.": ".self_attn_value_proj.",
    r"\.ca_qcontent_proj\.": ".cross_attn_query_content_proj.",
    r"\.ca_qpos_proj\.": ".cross_attn_query_pos_proj.",
    r"\.ca_kcontent_proj\.": ".cross_attn_key_content_proj.",
    r"\.ca_kpos_proj\.": ".cross_attn_key_pos_proj.",
    r"\.ca_v_proj\.": ".cross_attn_value_proj.",
    r"\.ca_qpos_sine_proj\.": ".cross_attn_query_pos_sine_proj.",
    r"\.decoder\.ref_point_head\.": ".decoder.anchor_position_head.",
    r"\.decoder\.ref_anchor_head\.": ".decoder.anchor_width_head.",
    r"\.decoder\.bbox_embed\.": ".decoder.anchor_offset_head.",
}


def rename_old_key(key: str) -> str:
    """The current name of a state-dict key written by an earlier version of this package."""
    for pattern, replacement in RENAMED_KEYS.items():
        key = re.sub(pattern, replacement, key, count=1)
    return key


def _has_nan_or_inf(x: torch.Tensor) -> torch.Tensor:
    # min and max propagate NaN and show ±inf: one pass over x, where isfinite(x).all() takes four
    low, high = torch.aminmax(x)
    return ~(torch.isfinite(low) & torch.isfinite(high))


def _sum_is_not_finite(x: torch.Tensor) -> torch.Tensor:
    # True whenever x holds NaN or ±inf, and also when huge finite values overflow the sum (`_has_nan_or_inf`
    # then decides); a sum is cheaper than aminmax on fp32 features
    return ~torch.isfinite(x.sum(dtype=torch.promote_types(x.dtype, torch.float32)))


@dataclass
class LDDetrOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): weighted sum of the loss terms, when `labels` are given.
        loss_dict (`dict[str, torch.FloatTensor]`, *optional*): the unweighted terms, with the official names
            (`loss_span`, `loss_giou`, `loss_label`, `loss_align`, `loss_sim`, `loss_saliency`, and `_0`, `_1`, ...
            for the auxiliary decoder layers).
        logits (`torch.FloatTensor` of shape `(B, Q, 2)`): foreground (index 0) / background logits per query; the
            moment score is `logits.softmax(-1)[..., 0]`.
        pred_spans (`torch.FloatTensor` of shape `(B, Q, 2)`): (center, width) of each moment, normalised to [0, 1]
            of the video.
        saliency_scores (`torch.FloatTensor` of shape `(B, L)`): saliency per clip; values at padded clips are
            meaningless.
        auxiliary_outputs (`list[dict]`): `logits` and `pred_spans` of each earlier decoder layer.
    """

    loss: torch.FloatTensor | None = None
    loss_dict: dict | None = None
    logits: torch.FloatTensor | None = None
    pred_spans: torch.FloatTensor | None = None
    saliency_scores: torch.FloatTensor | None = None
    auxiliary_outputs: list | None = None


class LDDetrPreTrainedModel(PreTrainedModel):
    config: LDDetrConfig
    config_class = LDDetrConfig
    base_model_prefix = "lddetr"
    main_input_name = "video_features"
    input_modalities = ("video", "text")
    accepts_loss_kwargs = False
    # a model saved for inference has no queues; they then start as a fresh random queue
    _keys_to_ignore_on_load_missing = [r"distill_align\.(video_queue|text_queue|queue_ptr)"]

    @staticmethod
    def _xavier_matrices(module: nn.Module) -> None:
        for param in module.parameters():
            if param.dim() > 1:
                init.xavier_uniform_(param)

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        # transformers treats any model outside its own package as custom code and then skips every module without
        # parameters of its own, as if already initialised: the layers and the decoder below, whose xavier
        # overwrites their Linears' defaults, would keep torch's defaults. `_init_weights` only uses
        # `transformers.initialization`, which leaves loaded tensors alone, so it can run on every module.
        super()._initialize_weights(module, is_custom_code=False)

    def _init_weights(self, module: nn.Module) -> None:
        """The official initialisation: PyTorch defaults, then xavier on the fuser's and decoder's matrices.

        Children are initialised before their parents, so a parent may overwrite its children's defaults.
        """
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.BatchNorm1d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.PReLU):
            init.constant_(module.weight, 0.25)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight)
        elif isinstance(module, nn.GRU):
            bound = 1 / math.sqrt(module.hidden_size)
            for param in module.parameters():
                init.uniform_(param, -bound, bound)
        elif isinstance(module, V2TExtractor):
            self._xavier_matrices(module)
        elif isinstance(module, (T2VEncoderLayer, EncoderLayer)):
            self._xavier_matrices(module)
            attention = module.attention
            # the official layers use torch's MultiheadAttention: one xavier over the stacked (3d, d) projection
            d = attention.q_proj.weight.shape[1]
            bound = math.sqrt(6.0 / (d + 3 * d))
            for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
                init.uniform_(proj.weight, -bound, bound)
                init.zeros_(proj.bias)
            init.zeros_(attention.out_proj.bias)
        elif isinstance(module, LoopDecoder):
            # the learned anchors keep their own (normal) initialisation
            self._xavier_matrices(module.decoder)
            # the official decoder zeroes its box head's last layer; the xavier above redraws only the weight
            init.zeros_(module.decoder.anchor_offset_head.layers[-1].bias)
            for submodule in module.decoder.modules():
                if isinstance(submodule, MultiheadAttention):
                    init.zeros_(submodule.out_proj.bias)
        elif isinstance(module, DistillAlign):
            init.xavier_uniform_(module.predictor.weight)
            init.constant_(module.temperature, self.config.temperature)
            for queue in (module.video_queue, module.text_queue):
                init.copy_(queue, F.normalize(torch.randn(queue.shape), dim=0))
            init.zeros_(module.queue_ptr)


class LDDetrModel(LDDetrPreTrainedModel):
    """LD-DETR with its heads, Hungarian matcher and losses. See the module docstring for the data flow."""

    def __init__(self, config: LDDetrConfig):
        super().__init__(config)
        d = config.hidden_size
        video_input_dim = config.video_feature_dim + config.audio_feature_dim
        self.video_encoder = UnimodalEncoder(video_input_dim, d, config.unimodal_dropout, config.kernels)
        self.text_encoder = UnimodalEncoder(config.text_feature_dim, d, config.unimodal_dropout, config.kernels)
        # momentum (EMA) copies: training state of Distill Align, never optimised
        self.momentum_video_encoder = MomentumEncoder(video_input_dim, d, config.unimodal_dropout, config.kernels)
        self.momentum_text_encoder = MomentumEncoder(
            config.text_feature_dim, d, config.unimodal_dropout, config.kernels
        )
        self.distill_align = DistillAlign(config)

        self.video_position = VideoPositionEmbedding(d)
        self.convolutional_fuser = ConvolutionalFuser(config)
        self.loop_decoder = LoopDecoder(config)
        self.moment_retrieval_head = MomentRetrievalHead(config)
        self.highlight_detection_head = HighlightDetectionHead(config)

        self.loss_function_lddetr = LDDetrLoss(config)
        self._training_progress: float | None = None
        self.post_init()
        # the momentum encoders start as exact copies (from_pretrained then overwrites both with the saved ones)
        self.momentum_video_encoder.copy_from(self.video_encoder)
        self.momentum_text_encoder.copy_from(self.text_encoder)

    def set_kernels(self, kernels: str) -> None:
        """Switch every module between the plain PyTorch reference ("eager") and the fused kernels ("fused"); the
        parameters stay as they are. Sets `config.kernels`, so a saved model keeps the choice."""
        if kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {', '.join(map(repr, KERNELS))}, got {kernels!r}.")
        self.config.kernels = kernels
        for module in self.modules():
            if hasattr(module, "kernels"):
                module.kernels = kernels

    def set_training_progress(self, epoch: float | None) -> None:
        """Training progress in epochs (e.g. 0.25 a quarter into the first epoch). The distillation coefficient
        ramps up linearly over the first epoch, as in the official training loop; None means no warm-up."""
        self._training_progress = epoch

    def _check_inputs(self, video_features, video_mask, text_features, text_mask, audio_features) -> None:
        config = self.config
        if video_features.dim() != 3 or text_features.dim() != 3:
            raise ValueError(
                f"video_features must be (B, L, Dv) and text_features (B, N, Dt); got {tuple(video_features.shape)} "
                f"and {tuple(text_features.shape)}."
            )
        if video_features.shape[-1] != config.video_feature_dim:
            raise ValueError(
                f"video_features have {video_features.shape[-1]} features per clip, the model expects "
                f"video_feature_dim={config.video_feature_dim} (tef columns included)."
            )
        if text_features.shape[-1] != config.text_feature_dim:
            raise ValueError(
                f"text_features have {text_features.shape[-1]} features per token, the model expects "
                f"text_feature_dim={config.text_feature_dim}."
            )
        if video_mask.shape != video_features.shape[:2] or text_mask.shape != text_features.shape[:2]:
            raise ValueError(
                f"attention masks must match the features: video {tuple(video_mask.shape)} vs "
                f"{tuple(video_features.shape[:2])}, text {tuple(text_mask.shape)} vs {tuple(text_features.shape[:2])}."
            )
        if video_features.shape[0] != text_features.shape[0]:
            raise ValueError(f"batch sizes differ: {video_features.shape[0]} videos, {text_features.shape[0]} queries.")
        if (config.audio_feature_dim > 0) != (audio_features is not None):
            raise ValueError(
                f"the model was configured with audio_feature_dim={config.audio_feature_dim}; "
                f"audio_features {'must' if config.audio_feature_dim else 'must not'} be given."
            )
        if audio_features is not None and audio_features.shape != (*video_features.shape[:2], config.audio_feature_dim):
            raise ValueError(
                f"audio_features must be (B, L, {config.audio_feature_dim}) like the video, "
                f"got {tuple(audio_features.shape)}."
            )
        if not config.validate_inputs or torch.compiler.is_compiling():
            return
        # problem -> the features it screens: a non-finite sum, confirmed below (an overflowing sum of finite
        # features is no problem)
        screened = {
            "video_features contain NaN or inf": video_features,
            "text_features contain NaN or inf": text_features,
        }
        checks = {
            **{problem: _sum_is_not_finite(features) for problem, features in screened.items()},
            "a video has no valid clip (all-masked video_attention_mask)": ~video_mask.any(1).all(),
            "a query has no valid token (all-masked text_attention_mask)": ~text_mask.any(1).all(),
            "video_attention_mask is not a prefix mask (valid clips must come first)": (
                video_mask[:, 1:] > video_mask[:, :-1]
            ).any(),
        }
        if audio_features is not None:
            screened["audio_features contain NaN or inf"] = audio_features
            checks["audio_features contain NaN or inf"] = _sum_is_not_finite(audio_features)
        failed = torch.stack(list(checks.values())).tolist()  # one host-device sync for all checks
        problems = [
            problem
            for problem, bad in zip(checks, failed)
            if bad and (problem not in screened or _has_nan_or_inf(screened[problem]))
        ]
        if problems:
            raise ValueError("Invalid LD-DETR inputs: " + "; ".join(problems) + ".")

    def _prepare_labels(self, labels: list[dict], padded_length: int, device: torch.device) -> dict:
        if len(labels) == 0:
            raise ValueError("labels must hold one dict per sample.")
        spans = [torch.as_tensor(label["spans"], dtype=torch.float32).reshape(-1, 2) for label in labels]
        scores = [torch.as_tensor(label["saliency_scores"], dtype=torch.float32).reshape(-1) for label in labels]
        longest = max(s.shape[0] for s in scores)
        if longest > padded_length:
            raise ValueError(f"labels have saliency_scores for {longest} clips, the batch has {padded_length}.")
        saliency = pad_sequence(scores, batch_first=True)  # (B, longest), zero-padded
        saliency = F.pad(saliency, (0, padded_length - longest))
        pos = [torch.as_tensor(label["saliency_pos_indices"], dtype=torch.long) for label in labels]
        neg = [torch.as_tensor(label["saliency_neg_indices"], dtype=torch.long) for label in labels]
        if len({p.numel() for p in pos + neg}) != 1:
            raise ValueError("every sample needs the same number of saliency_pos_indices and saliency_neg_indices.")
        return {
            "spans": torch.cat(spans).to(device, non_blocking=True),
            "sizes": [s.shape[0] for s in spans],
            "saliency_scores": saliency.to(device, non_blocking=True),
            "pos_idx": torch.stack(pos).to(device, non_blocking=True),
            "neg_idx": torch.stack(neg).to(device, non_blocking=True),
        }

    def forward(
        self,
        video_features: torch.Tensor,
        video_attention_mask: torch.Tensor,
        text_features: torch.Tensor,
        text_attention_mask: torch.Tensor,
        audio_features: torch.Tensor | None = None,
        labels: list[dict] | None = None,
    ) -> LDDetrOutput:
        r"""
        video_features (B, L, Dv): clip features, tef included; video_attention_mask (B, L): 1 = valid clip.
        text_features (B, N, Dt): token features; text_attention_mask (B, N): 1 = valid token.
        audio_features (B, L, Da), optional: concatenated to the video features.
        labels: list of B dicts with `spans` (n, 2) normalised (center, width), `saliency_scores` (L_b,) float,
            `saliency_pos_indices` and `saliency_neg_indices` (k,) long.
        """
        video_mask = video_attention_mask.bool()
        text_mask = text_attention_mask.bool()
        self._check_inputs(video_features, video_mask, text_features, text_mask, audio_features)
        if audio_features is not None:
            video_features = torch.cat([video_features, audio_features], dim=-1)
        device_type = video_features.device.type
        if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.bfloat16:
            # one cast of the inputs for the online and the momentum encoders, whose LayerNorms then run in bf16: on
            # fp32 inputs they return fp32, which each first Linear casts again (fp16 could overflow on raw features)
            video_features, text_features = video_features.bfloat16(), text_features.bfloat16()

        video = self.video_encoder(video_features)  # V' (B, L, d)
        text = self.text_encoder(text_features)  # T' (B, N, d)

        loss_align = loss_sim = None
        if labels is not None or self.training:
            if self.training:
                self.momentum_video_encoder.follow(self.video_encoder, self.config.momentum)
                self.momentum_text_encoder.follow(self.text_encoder, self.config.momentum)
            loss_align, loss_sim = self.distill_align(
                video,
                text,
                self.momentum_video_encoder(video_features),
                self.momentum_text_encoder(text_features),
                video_mask,
                text_mask,
                self._training_progress,
            )

        # in the features' dtype (bf16 under autocast), so that the sums with it do not turn the activations back to
        # fp32 and every projection after them re-casts them
        video_pos = self.video_position(video_mask).to(video.dtype)  # (B, L, d)
        memory = self.convolutional_fuser(video, text, video_mask, text_mask, video_pos)  # (B, L, d)

        hidden_states, reference_anchors = self.loop_decoder(memory, video_mask, video_pos)
        logits, spans = self.moment_retrieval_head(hidden_states, reference_anchors)  # (layers, B, Q, 2) each
        saliency = self.highlight_detection_head(logits[-1], spans[-1], memory, video, video_mask)  # (B, L)

        auxiliary_outputs = [{"logits": logits[i], "pred_spans": spans[i]} for i in range(logits.shape[0] - 1)]
        loss = loss_dict = None
        if labels is not None:
            outputs = {
                "logits": logits,
                "pred_spans": spans,
                "saliency_scores": saliency,
                "loss_align": loss_align,
                "loss_sim": loss_sim,
            }
            targets = self._prepare_labels(labels, video_mask.shape[1], video.device)
            loss_dict = self.loss_function_lddetr(outputs, targets, video_mask)
            weights = self.config.weight_dict
            loss = sum(loss_dict[name] * weights[name] for name in loss_dict if name in weights)
        return LDDetrOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=logits[-1],
            pred_spans=spans[-1],
            saliency_scores=saliency,
            auxiliary_outputs=auxiliary_outputs,
        )

    def save_pretrained(self, save_directory, *args, save_queues: bool = False, **kwargs):
        """Save weights and config. The momentum encoders (small) are always kept so that training can continue;
        the Distill Align queues (2 x hidden x queue_length floats, 128 MiB for the official model) are kept only
        with `save_queues=True` (training checkpoints). Without them, loading starts from fresh random queues."""
        if not save_queues:
            state_dict = kwargs.pop("state_dict", None)
            if state_dict is None:
                state_dict = self.state_dict()
            kwargs["state_dict"] = {k: v for k, v in state_dict.items() if k not in QUEUE_KEYS}
        # write the current key names, not the old ones RENAMED_KEYS maps from
        kwargs.setdefault("save_original_format", False)
        return super().save_pretrained(save_directory, *args, **kwargs)


# by class name, so that it also applies to the remote-code copy of this file (trust_remote_code)
register_checkpoint_conversion_mapping(
    LDDetrModel.__name__, [WeightRenaming(old, new) for old, new in RENAMED_KEYS.items()], overwrite=True
)

__all__ = ["LDDetrModel", "LDDetrOutput", "LDDetrPreTrainedModel"]
