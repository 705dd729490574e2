"""
Conversion of original mPLUG checkpoints (AliceMind `.pth`, ModelScope folders) to `mplug_hf` models.

Every source key is either mapped to a key of the target model or dropped by one of the documented rules in
`DROP_RULES`; anything else — and any target key left without a source — is an error listing the keys.

Key mapping (original → ours), after removing the pretraining infixes `text_encoder.bert.` → `text_encoder.` and
`fusion_encoder.fusion.` → `fusion_encoder.`:

| original | ours |
|---|---|
| `visual_encoder.visual.conv1.weight` | `…vision_model.embeddings.patch_embedding.weight` |
| `visual_encoder.visual.{class_embedding, positional_embedding}` | `…embeddings.{class_embedding, position_embedding}` (resized bilinearly to the target grid) |
| `visual_encoder.visual.ln_pre / ln_post` | `…pre_layernorm / post_layernorm` |
| `…resblocks.N.attn.in_proj_{weight,bias}` (rows q, k, v) | `…layers.N.self_attn.{q,k,v}_proj` |
| `…resblocks.N.{attn.out_proj, ln_1, ln_2, mlp.c_fc, mlp.c_proj}` | `…layers.N.{self_attn.o_proj, layer_norm1, layer_norm2, mlp.fc1, mlp.fc2}` |
| `visn_fc / visn_layer_norm` (large) | `…vision_model.projection.{dense, layer_norm}` |
| BERT `encoder.layer.N.attention.self.{query,key,value}` / `attention.output.{dense,LayerNorm}` | `layers.N.self_attn.{q,k,v,o}_proj` / `self_attn_layer_norm` |
| BERT `crossattention.*` | `cross_attn.*`, `cross_attn_layer_norm` |
| BERT `intermediate.dense / output.dense / output.LayerNorm` | `mlp.fc1 / mlp.fc2 / final_layer_norm` |
| `fusion_encoder.encoder.layer.{start + j}` | `…fusion_encoder.layers.j` (start = stored layers − fusion_layers) |
| `text_decoder.bert.*` / `text_decoder.cls.predictions.{transform.dense, transform.LayerNorm, bias}` | `text_decoder.model.*` / `text_decoder.lm_head.{dense, layer_norm, decoder.bias}` |
| `vision_proj, text_proj, itm_head, temp` | same names |
"""

import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from huggingface_hub.errors import StrictDataclassError

from .configuration_mplug import MPLUGConfig, MPLUGTextConfig, MPLUGVisionConfig
from .io_utils import atomic_directory, atomic_write_json
from .modeling_mplug import resize_position_embedding
from .validation import describe_nonfinite


TASKS = ("vqa", "caption", "retrieval", "grounding", "pretrain")


class CheckpointConversionError(ValueError):
    """Raised when a checkpoint cannot be converted faithfully (unknown, missing or inconsistent keys)."""


def load_original_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """
    Read an original checkpoint without executing pickled code (`torch.load(weights_only=True)`). Accepts a `.pth`/`.bin`
    file or a ModelScope folder holding `pytorch_model.bin`; unwraps `{'model': …}` / `{'module': …}` and ModelScope's
    `model.` key prefix.
    """
    if os.path.isdir(path):
        candidates = [os.path.join(path, name) for name in ("pytorch_model.bin", "pytorch_model.pt", "model.pth")]
        found = [c for c in candidates if os.path.isfile(c)]
        if not found:
            raise CheckpointConversionError(f"{path} is a folder without pytorch_model.bin")
        path = found[0]
    if not os.path.isfile(path):
        raise CheckpointConversionError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError or EOFError depending on the damage
        raise CheckpointConversionError(
            f"cannot read {path} with torch.load(weights_only=True): {error}. The file is truncated/corrupt, or it "
            "pickles objects other than tensors; re-save it as a plain state dict (we never execute pickled code)."
        ) from error
    for wrapper in ("model", "module", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, dict) or not all(torch.is_tensor(v) for v in checkpoint.values()):
        raise CheckpointConversionError(f"{path} does not hold a state dict of tensors")
    if all(key.startswith("model.") for key in checkpoint):
        checkpoint = {key[len("model.") :]: value for key, value in checkpoint.items()}
    return checkpoint


def strip_pretraining_infixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`text_encoder.bert.*` → `text_encoder.*`, `fusion_encoder.fusion.*` → `fusion_encoder.*` (also `_m` copies)."""
    renamed = {}
    for key, value in state_dict.items():
        key = re.sub(r"^(text_encoder(?:_m)?)\.bert\.", r"\1.", key)
        key = re.sub(r"^(fusion_encoder(?:_m)?)\.fusion\.", r"\1.", key)
        renamed[key] = value
    return renamed


# ----------------------------------------------------------------------------------------------------------------------
# Configuration inferred from the weights
# ----------------------------------------------------------------------------------------------------------------------


def _count_layers(state_dict: dict[str, torch.Tensor], pattern: str) -> int:
    indices = {int(m.group(1)) for key in state_dict if (m := re.match(pattern, key))}
    return max(indices) + 1 if indices else 0


def infer_config(
    state_dict: dict[str, torch.Tensor],
    bert_config: dict | None = None,
    image_size: int | None = None,
) -> MPLUGConfig:
    """
    Build an [`MPLUGConfig`] from the tensors' shapes and the original `config_bert.json` (for the fusion schedule,
    head counts and dropout, which weights do not reveal). Without `bert_config`, the schedule of the released models
    is assumed from the ViT width (768: base, S=3; 1024: large, S=6; 6 fusion layers).
    """
    conv = state_dict["visual_encoder.visual.conv1.weight"]
    vision_width, patch_size = conv.shape[0], conv.shape[-1]
    stored_grid = state_dict["visual_encoder.visual.positional_embedding"].shape[0] - 1
    if image_size is None:
        image_size = int(round(stored_grid**0.5)) * patch_size
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, int)
        or image_size < patch_size
        or image_size % patch_size
    ):
        raise CheckpointConversionError(
            f"image_size {image_size!r} must be a positive multiple of the checkpoint's patch size {patch_size}"
        )
    vision = MPLUGVisionConfig(
        hidden_size=vision_width,
        intermediate_size=state_dict["visual_encoder.visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_count_layers(state_dict, r"visual_encoder\.visual\.transformer\.resblocks\.(\d+)\."),
        num_attention_heads=max(vision_width // 64, 1),
        image_size=image_size,
        patch_size=patch_size,
    )
    word_embeddings = state_dict.get(
        "text_encoder.embeddings.word_embeddings.weight",
        state_dict.get("text_decoder.bert.embeddings.word_embeddings.weight"),
    )
    hidden_size = word_embeddings.shape[1]
    bert_config = dict(bert_config or {})
    intermediate_key = next(k for k in state_dict if k.endswith("encoder.layer.0.intermediate.dense.weight"))
    position_embeddings = state_dict.get(
        "text_encoder.embeddings.position_embeddings.weight",
        state_dict.get("text_decoder.bert.embeddings.position_embeddings.weight"),
    )
    text = MPLUGTextConfig(
        vocab_size=word_embeddings.shape[0],
        hidden_size=hidden_size,
        num_attention_heads=bert_config.get("num_attention_heads", max(hidden_size // 64, 1)),
        intermediate_size=state_dict[intermediate_key].shape[0],
        max_position_embeddings=position_embeddings.shape[0]
        if position_embeddings is not None
        else bert_config.get("max_position_embeddings", 512),
        layer_norm_eps=bert_config.get("layer_norm_eps", 1e-12),
        hidden_dropout_prob=bert_config.get("hidden_dropout_prob", 0.1),
        attention_probs_dropout_prob=bert_config.get("attention_probs_dropout_prob", 0.1),
        type_vocab_size=bert_config.get("type_vocab_size", 2),
    )
    is_large = vision_width != hidden_size
    stored_fusion = _count_layers(state_dict, r"fusion_encoder\.encoder\.layer\.(\d+)\.")
    text_encoder_layers = _count_layers(state_dict, r"text_encoder\.encoder\.layer\.(\d+)\.")
    decoder_layers = _count_layers(state_dict, r"text_decoder\.bert\.encoder\.layer\.(\d+)\.")
    config = MPLUGConfig(
        vision_config=vision,
        text_config=text,
        text_encoder_layers=text_encoder_layers or bert_config.get("text_encoder_layers", 6),
        fusion_layers=bert_config.get("fusion_layers", min(6, stored_fusion) if stored_fusion else 6),
        stride_layer=bert_config.get("stride_layer", 6 if is_large else 3),
        decoder_layers=decoder_layers or bert_config.get("text_decode_layers", 12),
        embed_dim=state_dict["vision_proj.weight"].shape[0] if "vision_proj.weight" in state_dict else 256,
    )
    return config


# ----------------------------------------------------------------------------------------------------------------------
# Key mapping
# ----------------------------------------------------------------------------------------------------------------------

_BERT_LAYER_RENAMES = [
    ("attention.self.query.", "self_attn.q_proj."),
    ("attention.self.key.", "self_attn.k_proj."),
    ("attention.self.value.", "self_attn.v_proj."),
    ("attention.output.dense.", "self_attn.o_proj."),
    ("attention.output.LayerNorm.", "self_attn_layer_norm."),
    ("crossattention.self.query.", "cross_attn.q_proj."),
    ("crossattention.self.key.", "cross_attn.k_proj."),
    ("crossattention.self.value.", "cross_attn.v_proj."),
    ("crossattention.output.dense.", "cross_attn.o_proj."),
    ("crossattention.output.LayerNorm.", "cross_attn_layer_norm."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
    ("output.LayerNorm.", "final_layer_norm."),
]

_CLIP_LAYER_RENAMES = [
    ("attn.out_proj.", "self_attn.o_proj."),
    ("ln_1.", "layer_norm1."),
    ("ln_2.", "layer_norm2."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
]


def _rename_bert_layer(rest: str) -> str | None:
    for old, new in _BERT_LAYER_RENAMES:
        if rest.startswith(old):
            return new + rest[len(old) :]
    return None


def _rename_bert_embeddings(rest: str) -> str | None:
    if rest == "position_ids":
        return None
    if re.match(r"(word_embeddings|position_embeddings|token_type_embeddings|LayerNorm)\.(weight|bias)$", rest):
        return rest
    return None


@dataclass
class ConversionReport:
    """What happened to every source key."""

    mapped: dict[str, str] = field(default_factory=dict)  # source key -> target key
    dropped: dict[str, str] = field(default_factory=dict)  # source key -> rule that dropped it
    unknown: list[str] = field(default_factory=list)


# Documented rules for source keys that have no counterpart in a converted model.
DROP_RULES: list[tuple[str, Callable[[str], bool]]] = [
    ("momentum copy (training only; kept with keep_momentum=True)", lambda k: re.match(r"^\w+_m\.", k) is not None),
    (
        "momentum queue / pointer (training only)",
        lambda k: k in ("image_queue", "text_queue", "idx_queue", "queue_ptr"),
    ),
    (
        "CLIP text tower and projection (unused by mPLUG)",
        lambda k: (
            k.startswith("visual_encoder.")
            and not k.startswith("visual_encoder.visual.")
            or k == "visual_encoder.visual.proj"
        ),
    ),
    ("BERT position_ids buffer (recomputed)", lambda k: k.endswith("embeddings.position_ids")),
    (
        "fusion embeddings (never used by the fusion forward pass)",
        lambda k: k.startswith("fusion_encoder.embeddings."),
    ),
    (
        "fusion MLM head of pretraining (not part of the released task models)",
        lambda k: k.startswith("fusion_encoder.cls."),
    ),
    (
        "grounding buffers (derived from config.box_prefix_token_id / box_bin_start_token_id / num_box_bins)",
        lambda k: k in ("prefix_ids", "target_ids", "bbox_prob_mask"),
    ),
]


def _drop_reason(key: str) -> str | None:
    for reason, rule in DROP_RULES:
        if rule(key):
            return reason
    return None


def convert_state_dict(
    state_dict: dict[str, torch.Tensor],
    config: MPLUGConfig,
    prefixes: dict[str, str | None],
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """
    Map an original state dict (infixes already stripped) to our key names.

    Args:
        state_dict: original tensors.
        config: the target configuration (fusion schedule, image size).
        prefixes: target prefix per original component: `visual`, `text_encoder`, `fusion_encoder`, `text_decoder`,
            `heads` (vision_proj/text_proj/itm_head/temp). A component mapped to None is dropped as unused by the task
            (e.g. the caption model's text encoder and fusion).
    Returns:
        the converted tensors (cloned, contiguous) and a report of every key.
    """
    report = ConversionReport()
    converted: dict[str, torch.Tensor] = {}
    stored_fusion = _count_layers(state_dict, r"fusion_encoder\.encoder\.layer\.(\d+)\.")
    fusion_start = stored_fusion - config.fusion_layers
    if fusion_start < 0 and prefixes.get("fusion_encoder") is not None:
        raise CheckpointConversionError(
            f"config.fusion_layers={config.fusion_layers} but the checkpoint stores only {stored_fusion} fusion layers"
        )
    num_patches = config.vision_config.num_patches

    def put(source: str, target: str, value: torch.Tensor):
        converted[target] = value.detach().clone().contiguous()
        # a packed source (CLIP in_proj: q, k, v rows) lists every target it was split into
        report.mapped[source] = f"{report.mapped[source]}, {target}" if source in report.mapped else target

    def drop(source: str, reason: str):
        report.dropped[source] = reason

    for key, value in state_dict.items():
        component = key.split(".", 1)[0]
        if component in ("vision_proj", "text_proj", "itm_head", "temp"):
            component = "heads"
        if component in ("visn_fc", "visn_layer_norm"):
            component = "visual"
        if key.startswith("visual_encoder.visual."):
            component = "visual"
        reason = _drop_reason(key)
        if reason is None and component in prefixes and prefixes[component] is None:
            reason = f"{component} is not used by this task's forward pass"
        if reason is not None:
            drop(key, reason)
            continue
        target = None
        if component == "visual":
            target = _map_visual(key, value, prefixes["visual"], num_patches, put)
        elif component == "text_encoder" and prefixes.get("text_encoder") is not None:
            rest = key[len("text_encoder.") :]
            target = _map_bert(rest, prefixes["text_encoder"])
        elif component == "fusion_encoder" and prefixes.get("fusion_encoder") is not None:
            match = re.match(r"fusion_encoder\.encoder\.layer\.(\d+)\.(.*)$", key)
            if match:
                stored, rest = int(match.group(1)), match.group(2)
                j = stored - fusion_start
                if j < 0:
                    drop(key, f"fusion layer {stored} is below the first running layer {fusion_start}")
                    continue
                if config.is_connected_fusion_layer(j) and rest.startswith("crossattention."):
                    drop(key, f"cross-attention of connected fusion layer j={j} (never used)")
                    continue
                renamed = _rename_bert_layer(rest)
                target = f"{prefixes['fusion_encoder']}layers.{j}.{renamed}" if renamed else None
        elif component == "text_decoder" and prefixes.get("text_decoder") is not None:
            target = _map_decoder(key, state_dict, prefixes["text_decoder"], drop)
            if target == "":
                continue
        elif component == "heads" and prefixes.get("heads") is not None:
            target = prefixes["heads"] + key
        if target is None:
            report.unknown.append(key)
        elif target != "<visual>":
            put(key, target, value)

    if report.unknown:
        raise CheckpointConversionError(
            f"{len(report.unknown)} checkpoint keys have no mapping and no drop rule: {sorted(report.unknown)}"
        )
    return converted, report


def _map_visual(key, value, prefix, num_patches, put) -> str | None:
    if key.startswith("visn_fc."):
        return prefix + "projection.dense." + key[len("visn_fc.") :]
    if key.startswith("visn_layer_norm."):
        return prefix + "projection.layer_norm." + key[len("visn_layer_norm.") :]
    rest = key[len("visual_encoder.visual.") :]
    simple = {
        "conv1.weight": "embeddings.patch_embedding.weight",
        "class_embedding": "embeddings.class_embedding",
        "ln_pre.weight": "pre_layernorm.weight",
        "ln_pre.bias": "pre_layernorm.bias",
        "ln_post.weight": "post_layernorm.weight",
        "ln_post.bias": "post_layernorm.bias",
    }
    if rest in simple:
        return prefix + simple[rest]
    if rest == "positional_embedding":
        put(key, prefix + "embeddings.position_embedding", resize_position_embedding(value, num_patches))
        return "<visual>"
    match = re.match(r"transformer\.resblocks\.(\d+)\.(.*)$", rest)
    if not match:
        return None
    layer, sub = match.group(1), match.group(2)
    if sub in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = sub.rsplit("_", 1)[1]
        for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
            put(key, f"{prefix}layers.{layer}.self_attn.{name}.{kind}", chunk)
        return "<visual>"
    for old, new in _CLIP_LAYER_RENAMES:
        if sub.startswith(old):
            return f"{prefix}layers.{layer}.{new}{sub[len(old) :]}"
    return None


def _map_bert(rest: str, prefix: str) -> str | None:
    if rest.startswith("embeddings."):
        renamed = _rename_bert_embeddings(rest[len("embeddings.") :])
        return prefix + "embeddings." + renamed if renamed else None
    match = re.match(r"encoder\.layer\.(\d+)\.(.*)$", rest)
    if match:
        renamed = _rename_bert_layer(match.group(2))
        return f"{prefix}layers.{match.group(1)}.{renamed}" if renamed else None
    return None


def _map_decoder(key, state_dict, prefix, drop) -> str | None:
    rest = key[len("text_decoder.") :]
    if rest.startswith("bert."):
        return _map_bert(rest[len("bert.") :], prefix + "model.")
    head = {
        "cls.predictions.transform.dense.weight": "lm_head.dense.weight",
        "cls.predictions.transform.dense.bias": "lm_head.dense.bias",
        "cls.predictions.transform.LayerNorm.weight": "lm_head.layer_norm.weight",
        "cls.predictions.transform.LayerNorm.bias": "lm_head.layer_norm.bias",
        "cls.predictions.bias": "lm_head.decoder.bias",
    }
    if rest in head:
        return prefix + head[rest]
    tied = {
        "cls.predictions.decoder.weight": "text_decoder.bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "text_decoder.cls.predictions.bias",
    }
    if rest in tied:
        if not torch.equal(state_dict[key], state_dict[tied[rest]]):
            raise CheckpointConversionError(f"{key} differs from {tied[rest]} but the model ties them")
        drop(key, f"tied to {tied[rest]}")
        return ""
    return None


def read_task_config(path: str) -> dict:
    """The original task YAML (AliceMind `configs/*.yaml`, ModelScope `config.yaml`)."""
    import yaml

    try:
        with open(path) as handle:
            data = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        raise CheckpointConversionError(f"cannot read the task YAML {path}: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointConversionError(f"{path} is not a YAML mapping")
    return data


def find_setting(config: dict, name: str):
    """The first value of `name` in a possibly nested config (ModelScope nests the original's keys)."""
    if name in config:
        return config[name]
    for value in config.values():
        if isinstance(value, dict) and (found := find_setting(value, name)) is not None:
            return found
    return None


def read_bert_config(path: str | None) -> dict | None:
    if path is None:
        return None
    try:
        with open(path) as handle:
            data = json.load(handle)
    except OSError as error:
        raise CheckpointConversionError(f"cannot read the BERT config {path}: {error}") from error
    except json.JSONDecodeError as error:
        raise CheckpointConversionError(
            f"{path}:{error.lineno}: not JSON ({error.msg}); --config-bert takes the original config_bert.json"
        ) from error
    if not isinstance(data, dict):
        raise CheckpointConversionError(f"{path} is not a JSON object of BERT settings")
    return data


# ----------------------------------------------------------------------------------------------------------------------
# Whole-checkpoint conversion
# ----------------------------------------------------------------------------------------------------------------------

_ENCODER = {
    "visual": "mplug.vision_model.",
    "text_encoder": "mplug.text_encoder.",
    "fusion_encoder": "mplug.fusion_encoder.",
}
# Target prefixes per task; None = the component is dropped because the task's forward pass never uses it.
TASK_PREFIXES = {
    "vqa": {**_ENCODER, "text_decoder": "text_decoder.", "heads": None},
    "caption": {
        "visual": "vision_model.",
        "text_encoder": None,
        "fusion_encoder": None,
        "text_decoder": "text_decoder.",
        "heads": None,
    },
    "retrieval": {**_ENCODER, "text_decoder": None, "heads": "contrastive."},
    "grounding": {**_ENCODER, "text_decoder": "text_decoder.", "heads": None},
    "pretrain": {**_ENCODER, "text_decoder": "text_decoder.", "heads": "contrastive."},
}
# Original decoding settings, saved as the converted model's generation_config.json. The original's min/max lengths
# count generated tokens only (not the [CLS] start token), which are transformers' min/max_new_tokens (its min_length /
# max_length count the start token too: one token fewer, and [SEP] allowed one step early). Its beam search ranks the
# hypotheses by their summed log-probability: length_penalty 0 (transformers' default 1 divides by the length).
TASK_GENERATION = {
    "vqa": {"num_beams": 5, "min_new_tokens": 1, "max_new_tokens": 10, "length_penalty": 0.0},
    "caption": {"num_beams": 5, "min_new_tokens": 8, "max_new_tokens": 25, "length_penalty": 0.0},
}


def detect_tasks(state_dict: dict[str, torch.Tensor]) -> tuple[str, tuple[str, ...]]:
    """
    What an original checkpoint (after [`strip_pretraining_infixes`]) is, from its key set, and the tasks it can be
    converted to: `(detected, allowed)`. A pretraining checkpoint (ITM head and decoder, or the MLM head) is the
    starting point of every fine-tuning and converts to any task; a grounding checkpoint (box-token buffers) only to
    grounding; a retrieval one (ITM head, no decoder) only to retrieval; a decoder-only fine-tuned checkpoint with
    momentum decoder copies (the VQA distillation) only to vqa; without them vqa and caption cannot be told apart.
    """
    keys = set(state_dict)
    has = lambda prefix: any(key.startswith(prefix) for key in keys)  # noqa: E731
    decoder = has("text_decoder.")
    if keys & {"bbox_prob_mask", "prefix_ids", "target_ids"}:
        return "grounding", ("grounding",)
    if has("fusion_encoder.cls.") or (has("itm_head.") and decoder):
        return "pretrain", TASKS
    if has("itm_head."):
        return "retrieval", ("retrieval",)
    if decoder and has("text_decoder_m."):
        return "vqa", ("vqa",)
    if decoder and has("text_encoder.") and has("fusion_encoder."):
        return "vqa or caption", ("vqa", "caption")
    if decoder:
        return "caption", ("caption",)
    raise CheckpointConversionError(
        "the checkpoint has neither a text decoder nor an ITM head: not an mPLUG checkpoint"
    )


def check_finite(state_dict: dict[str, torch.Tensor], where: str, allow_nonfinite: bool = False) -> None:
    """Raise (or, with `allow_nonfinite`, warn) naming the tensors of `state_dict` that hold NaN/inf."""
    message = describe_nonfinite(state_dict, where)
    if message is None:
        return
    if not allow_nonfinite:
        raise CheckpointConversionError(message + " (pass allow_nonfinite=True / --allow-nonfinite to convert anyway)")
    warnings.warn(message, stacklevel=3)


def task_model_class(task: str):
    from . import modeling_mplug

    classes = {
        "vqa": modeling_mplug.MPLUGForQuestionAnswering,
        "caption": modeling_mplug.MPLUGForCaptioning,
        "retrieval": modeling_mplug.MPLUGForRetrieval,
        "grounding": modeling_mplug.MPLUGForGrounding,
        "pretrain": modeling_mplug.MPLUGForPreTraining,
    }
    if task not in classes:
        raise CheckpointConversionError(f"unknown task {task!r}; choose one of {TASKS}")
    return classes[task]


def check_grounding_buffers(state_dict: dict[str, torch.Tensor], config: MPLUGConfig) -> None:
    """The original stores box-token buffers; they must agree with the config we derive them from."""
    start, bins = config.box_bin_start_token_id, config.num_box_bins
    expected = {
        "prefix_ids": torch.tensor([config.box_prefix_token_id]),
        "target_ids": torch.arange(start, start + bins),
    }
    for key, value in expected.items():
        if key in state_dict and not torch.equal(state_dict[key].view(-1).long(), value):
            raise CheckpointConversionError(f"{key} in the checkpoint disagrees with the config's box tokens")
    if "bbox_prob_mask" in state_dict:
        allowed = (state_dict["bbox_prob_mask"] == 0).nonzero().view(-1)
        if not torch.equal(allowed, expected["target_ids"]):
            raise CheckpointConversionError("bbox_prob_mask allows other tokens than the config's box bins")


# Momentum parts our ITC heads keep with keep_momentum (original name → the online name it mirrors).
_MOMENTUM_RENAMES = {
    "visual_encoder_m.": "visual_encoder.",
    "visn_fc_m.": "visn_fc.",
    "visn_layer_norm_m.": "visn_layer_norm.",
    "text_encoder_m.": "text_encoder.",
    "vision_proj_m.": "vision_proj.",
    "text_proj_m.": "text_proj.",
}
_MOMENTUM_PREFIXES = {
    "visual": "momentum_encoders.vision_model.",
    "text_encoder": "momentum_encoders.text_encoder.",
    "fusion_encoder": None,
    "text_decoder": None,
    "heads": "momentum_encoders.",
}
_QUEUES = ("image_queue", "text_queue", "idx_queue", "queue_ptr")


def split_momentum_state(
    state_dict: dict[str, torch.Tensor], task: str, config: MPLUGConfig
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], ConversionReport]:
    """
    For `keep_momentum`: the momentum encoders, projections and queues of a retrieval / pretraining checkpoint
    converted to our `momentum_encoders.*` keys (setting `config.momentum_queue_size`). Returns the remaining state
    dict, the converted momentum tensors and their report. Momentum copies of the fusion encoder and decoder (used
    by the original only for distillation terms we do not train) stay in the remaining dict and are dropped there.
    """
    if task not in ("retrieval", "pretrain"):
        raise CheckpointConversionError(
            f"keep_momentum applies to the ITC heads (retrieval, pretrain); the {task} model has no momentum training"
        )
    if "image_queue" not in state_dict or "text_queue" not in state_dict:
        raise CheckpointConversionError("keep_momentum: the checkpoint has no image_queue / text_queue")
    config.momentum_queue_size = state_dict["image_queue"].shape[1]
    sources, renamed = {}, {}
    for key, value in state_dict.items():
        for old, new in _MOMENTUM_RENAMES.items():
            if key.startswith(old):
                renamed[new + key[len(old) :]] = value
                sources[new + key[len(old) :]] = key
    converted, inner = convert_state_dict(renamed, config, _MOMENTUM_PREFIXES) if renamed else ({}, None)
    report = ConversionReport()
    if inner is not None:
        report.mapped = {sources[key]: target for key, target in inner.mapped.items()}
        report.dropped = {sources[key]: reason for key, reason in inner.dropped.items()}
    for name in _QUEUES:
        if name in state_dict:
            converted[f"momentum_encoders.{name}"] = state_dict[name].clone()
            report.mapped[name] = f"momentum_encoders.{name}"
    if "idx_queue" not in state_dict:  # pretraining queues carry no image identities: never positives
        converted["momentum_encoders.idx_queue"] = torch.full((1, config.momentum_queue_size), -100)
    converted["momentum_encoders.initialized"] = torch.tensor(bool(renamed))
    remaining = {k: v for k, v in state_dict.items() if k not in report.mapped and k not in report.dropped}
    return remaining, converted, report


def convert_checkpoint(
    checkpoint_path: str,
    task: str,
    bert_config: dict | str | None = None,
    image_size: int | None = None,
    dtype: torch.dtype | None = None,
    keep_momentum: bool = False,
    task_config: dict | str | None = None,
    allow_nonfinite: bool = False,
):
    """
    Load an original checkpoint into the task's `mplug_hf` model. Returns `(model, report)`. Raises
    [`CheckpointConversionError`] listing any unknown source key or any target parameter left without a source.

    With `keep_momentum` (retrieval, pretrain) the momentum encoders and queues are kept for training with the
    original's momentum distillation (see [`split_momentum_state`]); without momentum encoders in the file, they are
    copied from the online weights at the first training step.

    `task_config` is the original task YAML (path or dict; a ModelScope folder's `config.yaml` is found by itself);
    its `image_res` is the target resolution unless `image_size` is given.

    The key set tells what the checkpoint is ([`detect_tasks`]): `task=None` converts it as that task, and a `task` it
    cannot be converted to (a grounding checkpoint as vqa, a vqa one as caption) raises, naming the detected task.
    Tensors holding NaN/inf (in the file, or after the `dtype` cast) raise naming them, or only warn with
    `allow_nonfinite`.
    """
    if task is not None:
        task_model_class(task)  # an unknown task name fails before the file is read
    if task_config is None and os.path.isdir(checkpoint_path):
        candidate = os.path.join(checkpoint_path, "config.yaml")
        task_config = candidate if os.path.isfile(candidate) else None
    if isinstance(task_config, str):
        task_config = read_task_config(task_config)
    if image_size is None and task_config:
        image_size = find_setting(task_config, "image_res")
    if isinstance(bert_config, str):
        bert_config = read_bert_config(bert_config)
    if bert_config is None and os.path.isdir(checkpoint_path):
        candidate = os.path.join(checkpoint_path, "config_bert.json")
        bert_config = read_bert_config(candidate) if os.path.isfile(candidate) else None
    state_dict = strip_pretraining_infixes(load_original_checkpoint(checkpoint_path))
    detected, allowed = detect_tasks(state_dict)
    if task is None:
        if len(allowed) != 1 and detected != "pretrain":
            raise CheckpointConversionError(
                f"{checkpoint_path}: the key set says {detected}; pass the task ({' or '.join(allowed)})"
            )
        task = "pretrain" if detected == "pretrain" else allowed[0]
    elif task not in allowed:
        raise CheckpointConversionError(
            f"{checkpoint_path} is a {detected} checkpoint (from its keys), not a {task} one; convert it with task"
            f" {' or '.join(repr(name) for name in allowed)}"
        )
    model_class = task_model_class(task)
    check_finite(state_dict, f"in {checkpoint_path}", allow_nonfinite)
    try:
        config = infer_config(state_dict, bert_config, image_size)
    except CheckpointConversionError:
        raise
    except (StrictDataclassError, ValueError) as error:  # settings of the BERT config / task YAML no mPLUG has
        raise CheckpointConversionError(
            f"the checkpoint and its settings give no valid mPLUG config: {error}"
        ) from error
    prefixes = dict(TASK_PREFIXES[task])
    if task == "pretrain":
        # The pretraining MLM head, when the file has one, becomes ours (its vocabulary matrix is tied).
        state_dict = {
            (
                k.replace("fusion_encoder.cls.predictions.", "mlm_head.") if k.startswith("fusion_encoder.cls.") else k
            ): v
            for k, v in state_dict.items()
        }
    check_grounding_buffers(state_dict, config)
    momentum_state, momentum_report = {}, ConversionReport()
    if keep_momentum:
        state_dict, momentum_state, momentum_report = split_momentum_state(state_dict, task, config)
    pretrain_mlm = {k: v for k, v in state_dict.items() if k.startswith("mlm_head.")}
    converted, report = convert_state_dict(
        {k: v for k, v in state_dict.items() if not k.startswith("mlm_head.")}, config, prefixes
    )
    converted.update(_map_mlm_head(pretrain_mlm, state_dict, report))
    converted.update(momentum_state)
    report.mapped.update(momentum_report.mapped)
    report.dropped.update(momentum_report.dropped)
    model = model_class(config)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    tied = set(model.get_expanded_tied_weights_keys(all_submodels=True))
    missing = [key for key in missing if key not in tied]
    if keep_momentum and not bool(momentum_state["momentum_encoders.initialized"]):
        # queues without momentum encoders: the encoders start as copies of the online ones at the first step
        missing = [key for key in missing if not key.startswith("momentum_encoders.")]
    if missing or unexpected:
        raise CheckpointConversionError(f"missing keys {sorted(missing)}; unexpected keys {sorted(unexpected)}")
    model.tie_weights()
    if task in TASK_GENERATION:
        for name, value in TASK_GENERATION[task].items():
            setattr(model.generation_config, name, value)
    if dtype is not None:
        model = model.to(dtype)
        check_finite(model.state_dict(), f"after the cast to {dtype}", allow_nonfinite)
    return model.eval(), report


def _map_mlm_head(mlm, state_dict, report) -> dict[str, torch.Tensor]:
    renames = {
        "mlm_head.transform.dense.weight": "mlm_head.dense.weight",
        "mlm_head.transform.dense.bias": "mlm_head.dense.bias",
        "mlm_head.transform.LayerNorm.weight": "mlm_head.layer_norm.weight",
        "mlm_head.transform.LayerNorm.bias": "mlm_head.layer_norm.bias",
        "mlm_head.bias": "mlm_head.decoder.bias",
    }
    converted = {}
    for key, value in mlm.items():
        if key in renames:
            converted[renames[key]] = value.clone()
            report.mapped[key] = renames[key]
        elif key in ("mlm_head.decoder.weight", "mlm_head.decoder.bias"):
            report.dropped[key] = "tied to the text encoder word embeddings / mlm_head.bias"
        else:
            raise CheckpointConversionError(f"unknown MLM head key {key}")
    return converted


# ----------------------------------------------------------------------------------------------------------------------
# Verification against reference tensors produced by the original code
# ----------------------------------------------------------------------------------------------------------------------

VERIFY_INPUTS = ("pixel_values", "input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")
# output name → (what it is, hidden-state or logit tolerance class)
VERIFY_OUTPUTS = {
    "image_embeds": ("visual encoder output (+ visn projection for large) on pixel_values", "hidden"),
    "text_embeds": ("text encoder output on input_ids", "hidden"),
    "fusion_image_output": ("fusion V_out", "hidden"),
    "fusion_text_output": ("fusion T_out", "hidden"),
    "image_feat": ("normalised ITC image features", "hidden"),
    "text_feat": ("normalised ITC text features", "hidden"),
    "logits": ("decoder logits, teacher forced on decoder_input_ids (one answer per question)", "logits"),
}


@torch.no_grad()
def verify_converted(
    model, reference: dict[str, torch.Tensor], hidden_atol: float = 1e-5, logits_atol: float = 1e-4
) -> list[dict]:
    """
    Compare a converted model with tensors the original implementation produced (`--verify FILE.safetensors`).

    The file holds inputs named as in `VERIFY_INPUTS` and any of the outputs in `VERIFY_OUTPUTS`; a reference may
    cover a leading slice of an output (e.g. the first 1024 vocabulary columns of the logits): its shape selects
    the slice. Returns one row per output: `{name, max_abs_diff, atol, ok}`.
    """
    if "pixel_values" not in reference:
        raise CheckpointConversionError("the reference file needs pixel_values (and input_ids for text outputs)")
    expected = {name: reference[name] for name in VERIFY_OUTPUTS if name in reference}
    if not expected:
        raise CheckpointConversionError(f"the reference file has none of the outputs {sorted(VERIFY_OUTPUTS)}")
    unknown = sorted(set(reference) - set(VERIFY_INPUTS) - set(VERIFY_OUTPUTS))
    if unknown:
        raise CheckpointConversionError(f"unknown reference tensors {unknown}; expected {VERIFY_INPUTS} + outputs")
    dtype = next(model.parameters()).dtype
    pixel_values = reference["pixel_values"].to(dtype)
    input_ids, attention_mask = reference.get("input_ids"), reference.get("attention_mask")
    actual = {}
    vision = model.vision_model if hasattr(model, "vision_model") else model.mplug.vision_model
    actual["image_embeds"] = vision(pixel_values).last_hidden_state
    memory, memory_mask = actual["image_embeds"], None
    if hasattr(model, "mplug") and input_ids is not None:
        encoded = model.mplug(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
        actual.update(
            text_embeds=encoded.text_states,
            fusion_image_output=encoded.fused_image_states,
            fusion_text_output=encoded.fused_text_states,
        )
        memory, memory_mask = encoded.last_hidden_state, encoded.encoder_attention_mask
        if hasattr(model, "contrastive"):
            actual["image_feat"] = model.contrastive.image_features(encoded.image_states)
            actual["text_feat"] = model.contrastive.text_features(encoded.text_states)
    if "decoder_input_ids" in reference and hasattr(model, "text_decoder"):
        actual["logits"] = model.text_decoder(
            reference["decoder_input_ids"],
            encoder_hidden_states=memory,
            encoder_attention_mask=memory_mask,
            attention_mask=reference.get("decoder_attention_mask"),
        ).logits
    rows = []
    for name, target in expected.items():
        if name not in actual:
            raise CheckpointConversionError(f"reference output {name!r} does not apply to {type(model).__name__}")
        value = actual[name]
        if value.ndim != target.ndim or any(a < t for a, t in zip(value.shape, target.shape)):
            raise CheckpointConversionError(
                f"{name}: reference shape {tuple(target.shape)} does not fit the output {tuple(value.shape)}"
            )
        value = value[tuple(slice(0, size) for size in target.shape)]
        atol = hidden_atol if VERIFY_OUTPUTS[name][1] == "hidden" else logits_atol
        difference = (value.float() - target.float()).abs().max().item() if target.numel() else 0.0
        rows.append({"name": name, "max_abs_diff": difference, "atol": atol, "ok": difference <= atol})
    return rows


def save_converted(model, report: ConversionReport, output_dir: str, vocab_file: str | None = None) -> None:
    """Write safetensors + config + generation config + processor files (with `vocab_file`, e.g. a ModelScope
    folder's vocab.txt, else the shipped bert-base-uncased vocabulary) + the key report."""
    from .image_processing_mplug import MPLUGImageProcessor
    from .processing_mplug import MPLUGProcessor, default_tokenizer

    model.save_pretrained(output_dir)
    tokenizer = default_tokenizer(vocab_file) if vocab_file else default_tokenizer()
    image_processor = MPLUGImageProcessor(image_size=model.config.vision_config.image_size)
    MPLUGProcessor(image_processor, tokenizer).save_pretrained(output_dir)
    atomic_write_json(
        os.path.join(output_dir, "conversion_report.json"),
        {"mapped": report.mapped, "dropped": report.dropped},
        indent=1,
        sort_keys=True,
    )


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        description="Convert an original mPLUG checkpoint to an mplug_hf model folder. The folder is written under a "
        "temporary name beside output_dir and moved into place only once it is complete (and verified with --verify)."
    )
    parser.add_argument("checkpoint", help="original .pth/.bin file, or a ModelScope folder with pytorch_model.bin")
    parser.add_argument("output_dir")
    parser.add_argument(
        "--task",
        choices=TASKS,
        help="the head to convert to; by default the task the checkpoint's keys tell (a task they rule out is an error)",
    )
    parser.add_argument("--config-bert", help="the original config_bert.json (fusion schedule, heads)")
    parser.add_argument("--image-size", type=int, help="target resolution (positional embedding is resized)")
    parser.add_argument(
        "--config-yaml", help="the original task YAML (its image_res; a ModelScope folder's config.yaml is automatic)"
    )
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument(
        "--keep-momentum",
        action="store_true",
        help="retrieval/pretrain: keep the momentum encoders and queues to continue the original's ITC training",
    )
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload model and processor to this Hub repo")
    parser.add_argument(
        "--verify",
        metavar="REFERENCE.safetensors",
        help="compare the converted model (reloaded from the written files) with tensors the original code produced "
        "(see verify_converted); on a difference above its tolerance nothing is written",
    )
    parser.add_argument("--verify-atol", type=float, default=1e-5, help="hidden-state tolerance (logits: 10x)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output_dir")
    parser.add_argument(
        "--allow-nonfinite", action="store_true", help="convert a checkpoint with NaN/inf tensors (warns, naming them)"
    )
    args = parser.parse_args(argv)
    output_dir = os.path.abspath(args.output_dir)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        parser.error(f"output_dir {args.output_dir} exists and is not a folder")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not args.overwrite:
        parser.error(f"output_dir {args.output_dir} exists and is not empty; pass --overwrite to replace it")
    if args.verify and not os.path.isfile(args.verify):
        parser.error(f"--verify: no file {args.verify}")
    if not args.verify_atol >= 0:  # NaN too
        parser.error(f"--verify-atol must be >= 0, got {args.verify_atol}")
    try:
        model, report = convert_checkpoint(
            args.checkpoint,
            args.task,
            args.config_bert,
            args.image_size,
            getattr(torch, args.dtype),
            args.keep_momentum,
            args.config_yaml,
            allow_nonfinite=args.allow_nonfinite,
        )
    except CheckpointConversionError as error:
        raise SystemExit(f"conversion failed: {error}") from error
    folder_vocab = os.path.join(args.checkpoint, "vocab.txt")
    with atomic_directory(output_dir, overwrite=args.overwrite) as staging:
        save_converted(model, report, str(staging), folder_vocab if os.path.isfile(folder_vocab) else None)
        if args.verify:
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            # the written files are what later loads: verify them, not only the model in memory
            written = type(model).from_pretrained(str(staging), dtype=next(model.parameters()).dtype).eval()
            try:
                rows = verify_converted(written, load_file(args.verify), args.verify_atol, 10 * args.verify_atol)
            except (CheckpointConversionError, SafetensorError) as error:
                raise SystemExit(
                    f"verification failed: {args.verify}: {error}; nothing was written to {args.output_dir}"
                ) from error
            for row in rows:
                status = "ok" if row["ok"] else "MISMATCH"
                print(
                    f"verify {row['name']:<22} max |diff| {row['max_abs_diff']:.3e} (atol {row['atol']:.0e}) {status}"
                )
            failed = [row["name"] for row in rows if not row["ok"]]
            if failed:
                raise SystemExit(
                    f"verification failed for {failed}; the converted model does not reproduce the reference, so "
                    f"nothing was written to {args.output_dir}"
                )
    print(
        f"converted {len(report.mapped)} tensors ({len(report.dropped)} dropped by documented rules) → {args.output_dir}"
    )
    if args.push_to_hub:
        from transformers import AutoProcessor

        from .hub import push_to_hub

        # with the remote code, the auto_map and the model card (of the authors' weights, just converted), so the
        # repo works without mplug_hf installed
        push_to_hub(model, AutoProcessor.from_pretrained(output_dir), args.push_to_hub, original_weights=True)


if __name__ == "__main__":
    main()
