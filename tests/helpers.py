"""Small configs and random inputs shared by the tests."""

import torch

from modeling_lddetr import LDDetrConfig

NO_DROPOUT = dict(unimodal_dropout=0.0, context_query_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, hidden_dropout=0.0)


# the sizes of a model small enough for tests; tiny_config adds tiny feature dims
TINY_SIZES = dict(hidden_size=32, num_attention_heads=4, ffn_dim=64, queue_length=16, num_convolutional_blocks=2)


def tiny_config(**overrides) -> LDDetrConfig:
    settings = dict(TINY_SIZES, video_feature_dim=20, text_feature_dim=12, num_queries=5)
    settings.update(overrides)
    return LDDetrConfig(**settings)


def random_batch(config: LDDetrConfig, video_lengths, text_lengths, seed: int = 0, padded_video=None, padded_text=None):
    """Features with prefix masks; padding is zeros. Returns (inputs dict, labels list)."""
    generator = torch.Generator().manual_seed(seed)
    batch = len(video_lengths)
    L = padded_video or max(video_lengths)
    N = padded_text or max(text_lengths)
    video = torch.zeros(batch, L, config.video_feature_dim)
    text = torch.zeros(batch, N, config.text_feature_dim)
    video_mask = torch.zeros(batch, L)
    text_mask = torch.zeros(batch, N)
    labels = []
    for b, (lv, lt) in enumerate(zip(video_lengths, text_lengths)):
        video[b, :lv] = torch.randn(lv, config.video_feature_dim, generator=generator)
        text[b, :lt] = torch.randn(lt, config.text_feature_dim, generator=generator)
        video_mask[b, :lv] = 1
        text_mask[b, :lt] = 1
        center = torch.rand(1, generator=generator).item() * 0.6 + 0.2
        saliency = torch.zeros(lv)
        start = int((center - 0.1) * lv)
        end = max(start + 1, int((center + 0.1) * lv))
        saliency[start:end] = torch.randint(1, 13, (end - start,), generator=generator).float()
        labels.append(
            {
                "spans": torch.tensor([[center, 0.2]]),
                "saliency_scores": saliency,
                "saliency_pos_indices": torch.tensor([start, end - 1]),
                "saliency_neg_indices": torch.tensor([0, lv - 1]),
            }
        )
    inputs = dict(video_features=video, video_attention_mask=video_mask, text_features=text, text_attention_mask=text_mask)
    return inputs, labels


# parameters that earlier versions of this package (and the official code) named with abbreviations: new -> old.
# Written from the old module structure, independently of modeling_lddetr.RENAMED_KEYS.
OLD_PARAMETER_NAMES = {
    "self_attn_query_content_proj": "sa_qcontent_proj", "self_attn_query_pos_proj": "sa_qpos_proj",
    "self_attn_key_content_proj": "sa_kcontent_proj", "self_attn_key_pos_proj": "sa_kpos_proj",
    "self_attn_value_proj": "sa_v_proj", "cross_attn_query_content_proj": "ca_qcontent_proj",
    "cross_attn_query_pos_proj": "ca_qpos_proj", "cross_attn_key_content_proj": "ca_kcontent_proj",
    "cross_attn_key_pos_proj": "ca_kpos_proj", "cross_attn_value_proj": "ca_v_proj",
    "cross_attn_query_pos_sine_proj": "ca_qpos_sine_proj", "anchor_position_head": "ref_point_head",
    "anchor_width_head": "ref_anchor_head", "anchor_offset_head": "bbox_embed", "clip_score_weight": "w4C",
    "token_score_weight": "w4Q", "clip_token_score_weight": "w4mlu", "predictor": "h", "temperature": "temp",
}


def old_key(key: str) -> str:
    """A state-dict key as earlier versions of this package wrote it (the anchors sat on the model itself)."""
    key = ".".join(OLD_PARAMETER_NAMES.get(part, part) for part in key.split("."))
    return key.removeprefix("loop_decoder.") if key.startswith("loop_decoder.anchor_embed.") else key
