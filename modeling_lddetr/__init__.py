"""LD-DETR for video moment retrieval and highlight detection, in Hugging Face transformers conventions."""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoProcessor

from .collator_lddetr import LDDetrDataCollator
from .configuration_lddetr import LDDetrConfig
from .feature_extraction_lddetr import LDDetrFeatureExtractor
from .modeling_lddetr import LDDetrModel, LDDetrOutput, LDDetrPreTrainedModel
from .processing_lddetr import LDDetrProcessor, write_submission

AutoConfig.register(LDDetrConfig.model_type, LDDetrConfig, exist_ok=True)
AutoModel.register(LDDetrConfig, LDDetrModel, exist_ok=True)
AutoFeatureExtractor.register(LDDetrConfig, LDDetrFeatureExtractor, exist_ok=True)
AutoProcessor.register(LDDetrConfig, LDDetrProcessor, exist_ok=True)
# saved folders carry the modeling code, so they load with trust_remote_code where this package is not installed
LDDetrConfig.register_for_auto_class()
LDDetrModel.register_for_auto_class("AutoModel")
LDDetrFeatureExtractor.register_for_auto_class()
LDDetrProcessor.register_for_auto_class()

__all__ = [
    "LDDetrConfig",
    "LDDetrDataCollator",
    "LDDetrFeatureExtractor",
    "LDDetrModel",
    "LDDetrOutput",
    "LDDetrPreTrainedModel",
    "LDDetrProcessor",
    "write_submission",
]
