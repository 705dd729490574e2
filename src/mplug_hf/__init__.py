"""mPLUG for Hugging Face transformers. Importing the package registers it with the Auto classes."""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForPreTraining,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    AutoTokenizer,
    BertTokenizer,
)

from .configuration_mplug import MPLUGConfig, MPLUGTextConfig, MPLUGVisionConfig
from .hub import export_for_hub, push_to_hub
from .image_processing_mplug import MPLUGImageProcessor
from .modeling_mplug import (
    MPLUGForCaptioning,
    MPLUGForGrounding,
    MPLUGForPreTraining,
    MPLUGForQuestionAnswering,
    MPLUGForRetrieval,
    MPLUGModel,
    MPLUGPreTrainedModel,
    MPLUGVisionModel,
)
from .pipelines import VisualGroundingPipeline, VisualQuestionAnsweringPipeline
from .processing_mplug import MPLUGProcessor, default_tokenizer


AutoConfig.register(MPLUGConfig.model_type, MPLUGConfig, exist_ok=True)
AutoModel.register(MPLUGConfig, MPLUGModel, exist_ok=True)
AutoModelForImageTextToText.register(MPLUGConfig, MPLUGForCaptioning, exist_ok=True)
AutoModelForVisualQuestionAnswering.register(MPLUGConfig, MPLUGForQuestionAnswering, exist_ok=True)
AutoModelForZeroShotImageClassification.register(MPLUGConfig, MPLUGForRetrieval, exist_ok=True)
AutoModelForPreTraining.register(MPLUGConfig, MPLUGForPreTraining, exist_ok=True)
AutoTokenizer.register(MPLUGConfig, tokenizer_class=BertTokenizer, exist_ok=True)
AutoImageProcessor.register(MPLUGConfig, image_processor_classes={"pil": MPLUGImageProcessor}, exist_ok=True)
AutoProcessor.register(MPLUGConfig, MPLUGProcessor, exist_ok=True)

__all__ = [
    "MPLUGConfig",
    "MPLUGForCaptioning",
    "MPLUGForGrounding",
    "MPLUGForPreTraining",
    "MPLUGForQuestionAnswering",
    "MPLUGForRetrieval",
    "MPLUGImageProcessor",
    "MPLUGModel",
    "MPLUGPreTrainedModel",
    "MPLUGProcessor",
    "MPLUGTextConfig",
    "MPLUGVisionConfig",
    "MPLUGVisionModel",
    "VisualGroundingPipeline",
    "VisualQuestionAnsweringPipeline",
    "default_tokenizer",
    "export_for_hub",
    "push_to_hub",
]
