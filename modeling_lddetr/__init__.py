"""LD-DETR for video moment retrieval and highlight detection, in Hugging Face transformers conventions."""

from transformers import AutoConfig, AutoModel

from .configuration_lddetr import LDDetrConfig
from .modeling_lddetr import LDDetrModel, LDDetrOutput, LDDetrPreTrainedModel

AutoConfig.register(LDDetrConfig.model_type, LDDetrConfig, exist_ok=True)
AutoModel.register(LDDetrConfig, LDDetrModel, exist_ok=True)
# saved folders carry the modeling code, so they load with trust_remote_code where this package is not installed
LDDetrConfig.register_for_auto_class()
LDDetrModel.register_for_auto_class("AutoModel")

__all__ = ["LDDetrConfig", "LDDetrModel", "LDDetrOutput", "LDDetrPreTrainedModel"]
