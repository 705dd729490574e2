# Copyright 2026 The mplug_hf Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""mPLUG model configuration."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.utils import auto_docstring


@auto_docstring
@strict
class MPLUGVisionConfig(PreTrainedConfig):
    r"""
    Configuration of mPLUG's visual encoder, a CLIP ViT (pre-LayerNorm, QuickGELU) whose `ln_post` is applied to every
    token. When `hidden_size` differs from the text hidden size (ViT-L/14 in mPLUG-large), the image tokens are
    projected by a linear layer + LayerNorm (`visn_fc` / `visn_layer_norm` in the original).

    Args:
        hidden_size (`int`): width W of the ViT.
        intermediate_size (`int`): MLP width (4·W in CLIP).
        num_hidden_layers (`int`): number of transformer blocks.
        num_attention_heads (`int`): attention heads (W / 64 in CLIP).
        image_size (`int`): side of the square input image.
        patch_size (`int`): side of a square patch; the image gives (image_size / patch_size)² patch tokens + 1 CLS.
        num_channels (`int`): input channels.
        hidden_act (`str`): MLP activation, CLIP's `quick_gelu`.
        layer_norm_eps (`float`): epsilon of every ViT LayerNorm.
        attention_dropout (`float`): dropout on attention probabilities.
        initializer_range (`float`): std of the normal initialisation.
    """

    model_type = "mplug_vision_model"
    base_config_key = "vision_config"

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 384
    patch_size: int = 16
    num_channels: int = 3
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float | int = 0.0
    initializer_range: float = 0.02

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@auto_docstring
@strict
class MPLUGTextConfig(PreTrainedConfig):
    r"""
    Configuration of mPLUG's BERT parts (text encoder, fusion layers, decoder). They share every width; their depths
    live on [`MPLUGConfig`]. `num_hidden_layers` is the depth of the generating decoder (kept equal to
    `MPLUGConfig.decoder_layers`) so that generation caches are sized for it.

    Args:
        vocab_size (`int`): WordPiece vocabulary size (bert-base-uncased: 30522).
        hidden_size (`int`): hidden width H.
        num_hidden_layers (`int`): decoder depth (see above).
        num_attention_heads (`int`): attention heads.
        intermediate_size (`int`): feed-forward width.
        hidden_act (`str`): feed-forward activation (exact GELU).
        hidden_dropout_prob (`float`): dropout after projections and embeddings.
        attention_probs_dropout_prob (`float`): dropout on attention probabilities.
        max_position_embeddings (`int`): number of absolute positions.
        type_vocab_size (`int`): token type vocabulary (unused by mPLUG, kept for weight compatibility).
        initializer_range (`float`): std of the normal initialisation.
        layer_norm_eps (`float`): epsilon of every LayerNorm (post-LN).
        pad_token_id, bos_token_id, eos_token_id, sep_token_id (`int`): [PAD]=0, [CLS]=101, [SEP]=102.
    """

    model_type = "mplug_text_model"
    base_config_key = "text_config"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    bos_token_id: int | None = 101
    eos_token_id: int | list[int] | None = 102
    sep_token_id: int | None = 102
    use_cache: bool = True
    tie_word_embeddings: bool = True

    @property
    def attention_dropout(self) -> float:
        """The attention-probability dropout under the name every attention module reads."""
        return self.attention_probs_dropout_prob


@auto_docstring
@strict
class MPLUGConfig(PreTrainedConfig):
    r"""
    Configuration of an mPLUG model: a CLIP ViT visual encoder, a BERT text encoder, the cross-modal skip-connected
    fusion encoder and a BERT decoder.

    Fusion schedule: fusion layer `j` (0-based) is a *connected* layer (full self-attention over [vision; text], then
    V ← V + V') when `j != 0 and j % stride_layer == 0`, otherwise an *asymmetric co-attention* layer (text attends to
    itself and to the frozen vision tokens). mPLUG-base uses `stride_layer=3` (layer 3 is connected), mPLUG-large
    `stride_layer=6` (no connected layer with 6 fusion layers).

    Args:
        vision_config (`dict` or [`MPLUGVisionConfig`]): the visual encoder.
        text_config (`dict` or [`MPLUGTextConfig`]): widths of every BERT part.
        text_encoder_layers (`int`): depth of the bidirectional text encoder.
        fusion_layers (`int`): number of fusion layers that run.
        stride_layer (`int`): the skip-connection stride S (see above).
        decoder_layers (`int`): depth of the BERT decoder.
        embed_dim (`int`): size of the image-text contrastive (ITC) projections.
        contrastive_temperature (`float`): initial ITC temperature (`temp` of the original).
        momentum_queue_size (`int`): with a value > 0 the ITC heads (retrieval, pretraining) train with a momentum
            (EMA) copy of the unimodal encoders and queues of this many momentum features, as the original (65536);
            0 disables both.
        momentum (`float`): EMA coefficient of the momentum encoders (0.995).
        distillation_alpha (`float`): weight of the momentum model's similarities in the ITC targets (0.4).
        box_prefix_token_id (`int`): token that starts a box (`[unused339]` = 344 in bert-base-uncased).
        box_bin_start_token_id (`int`): token of coordinate bin 0 (`[unused340]` = 345).
        num_box_bins (`int`): coordinate bins; bin b encodes b / (num_box_bins - 1) (the original: 337 bins over 336).
        decoder_start_token_id (`int`): first decoder token ([CLS] = 101).
    """

    model_type = "mplug"
    sub_configs_defaults = {"text_config": MPLUGTextConfig, "vision_config": MPLUGVisionConfig}

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    text_encoder_layers: int = 6
    fusion_layers: int = 6
    stride_layer: int = 3
    decoder_layers: int = 12
    embed_dim: int = 256
    contrastive_temperature: float = 0.07
    momentum_queue_size: int = 0
    momentum: float = 0.995
    distillation_alpha: float = 0.4
    box_prefix_token_id: int = 344
    box_bin_start_token_id: int = 345
    num_box_bins: int = 337
    pad_token_id: int | None = 0
    bos_token_id: int | None = 101
    eos_token_id: int | list[int] | None = 102
    decoder_start_token_id: int | None = 101
    # False for the family; the generating heads (captioning, VQA) set it on the config they are built from
    is_encoder_decoder: bool = False
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # The decoder is the text stack that generates, so the text config carries its depth (see get_text_config).
        self.text_config.num_hidden_layers = self.decoder_layers

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "MPLUGConfig":
        # transformers only warns on a foreign model_type; loading e.g. a BERT folder as mPLUG must fail clearly
        model_type = config_dict.get("model_type")
        if model_type is not None and model_type != cls.model_type:
            raise ValueError(f"this checkpoint is a {model_type!r} model, not an {cls.model_type!r} one")
        return super().from_dict(config_dict, **kwargs)

    def validate_architecture(self):
        """Reject schedules the model cannot build, with a message naming the field."""
        if self.stride_layer < 1:
            raise ValueError(f"stride_layer must be >= 1, got {self.stride_layer}")
        if not 0.0 <= self.momentum <= 1.0 or not 0.0 <= self.distillation_alpha <= 1.0:
            raise ValueError("momentum and distillation_alpha must lie in [0, 1]")
        for name in ("text_encoder_layers", "fusion_layers", "decoder_layers", "momentum_queue_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for sub in (self.text_config, self.vision_config):
            if sub.hidden_size % sub.num_attention_heads != 0:
                raise ValueError(
                    f"{sub.model_type}: hidden_size {sub.hidden_size} is not a multiple of "
                    f"num_attention_heads {sub.num_attention_heads}"
                )
        if self.vision_config.image_size % self.vision_config.patch_size != 0:
            raise ValueError(
                f"image_size {self.vision_config.image_size} is not a multiple of patch_size "
                f"{self.vision_config.patch_size}"
            )

    def is_connected_fusion_layer(self, layer_index: int) -> bool:
        """Whether fusion layer `layer_index` is a connected (skip-connection) layer rather than co-attention."""
        return layer_index != 0 and layer_index % self.stride_layer == 0

    @property
    def num_image_tokens(self) -> int:
        return self.vision_config.num_patches + 1

    @classmethod
    def base(cls, image_size: int = 384, **kwargs) -> "MPLUGConfig":
        """mPLUG-base: CLIP ViT-B/16 (W=768), 6 text-encoder, 6 fusion (S=3) and 12 decoder layers."""
        vision = MPLUGVisionConfig(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            image_size=image_size, patch_size=16,
        )  # fmt: skip
        return cls(vision_config=vision, text_config=MPLUGTextConfig(), stride_layer=3, **kwargs)

    @classmethod
    def large(cls, image_size: int = 336, **kwargs) -> "MPLUGConfig":
        """mPLUG-large: CLIP ViT-L/14 (W=1024, projected to 768), 6 text-encoder, 6 fusion (S=6), 12 decoder layers."""
        vision = MPLUGVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
            image_size=image_size, patch_size=14,
        )  # fmt: skip
        return cls(vision_config=vision, text_config=MPLUGTextConfig(), stride_layer=6, **kwargs)


__all__ = ["MPLUGConfig", "MPLUGTextConfig", "MPLUGVisionConfig"]
