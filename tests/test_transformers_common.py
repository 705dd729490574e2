"""transformers' own common test suites, unmodified, run against every mPLUG class.

The mixins come from the `tests/` folder of the installed transformers version's PyPI sdist, fetched into
`.cache/transformers-src/` by `tests/transformers_common/fetch_transformers_tests.py` (`.ci/run` calls it); without
it this module skips, except under CI=true where it fails. Testers follow transformers'
`tests/models/blip/test_modeling_blip.py`. A common test is skipped here only where its assumption does not hold for
mPLUG, with the reason; a failure is a defect of the model (or of the processor / image processor).
"""

import functools
import tempfile
import unittest
from pathlib import Path

import pytest
import torch
from transformers import BertTokenizer
from transformers_common import harness

from mplug_hf import (
    MPLUGConfig,
    MPLUGForCaptioning,
    MPLUGForGrounding,
    MPLUGForPreTraining,
    MPLUGForQuestionAnswering,
    MPLUGForRetrieval,
    MPLUGImageProcessor,
    MPLUGModel,
    MPLUGProcessor,
    MPLUGTextConfig,
    MPLUGVisionConfig,
    MPLUGVisionModel,
)


common = harness.load()
ModelTesterMixin = common.modeling.ModelTesterMixin
floats_tensor = common.modeling.floats_tensor
ids_tensor = common.modeling.ids_tensor
ConfigTester = common.configuration.ConfigTester
ImageProcessingTestMixin = common.image_processing.ImageProcessingTestMixin
ImageProcessingTester = common.image_processing.ImageProcessingTester
ProcessorTesterMixin = common.processing.ProcessorTesterMixin

NO_GENERATION_SUITE = (
    "GenerationTesterMixin (tests/generation/test_utils.py) is not in the transformers sdist; generate() is covered "
    "by tests/test_generation.py"
)


# ---------------------------------------------------------------------------------------------------------------
# Model testers (one tiny mPLUG: every feature, S=2 with a connected fusion layer, box tokens inside the vocabulary)
# ---------------------------------------------------------------------------------------------------------------


class MPLUGVisionModelTester:
    def __init__(
        self,
        parent,
        batch_size=3,
        image_size=32,
        patch_size=8,
        num_channels=3,
        is_training=True,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        initializer_range=0.02,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.is_training = is_training
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.initializer_range = initializer_range
        # ViT: the patches plus the [CLS] token
        self.seq_length = (image_size // patch_size) ** 2 + 1

    def get_config(self):
        # MPLUGVisionModel.config_class is MPLUGConfig: the tower reads `config.vision_config`
        return MPLUGConfig(
            vision_config=self.get_vision_config().to_dict(), text_config=MPLUGTextTester(None).get_config_dict()
        )

    def get_vision_config(self):
        return MPLUGVisionConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            initializer_range=self.initializer_range,
        )

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return self.get_config(), pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}

    def create_and_check_model(self, config, pixel_values):
        model = MPLUGVisionModel(config).eval()
        with torch.no_grad():
            result = model(pixel_values)
        self.parent.assertEqual(result.last_hidden_state.shape, (self.batch_size, self.seq_length, self.hidden_size))
        self.parent.assertEqual(result.pooler_output.shape, (self.batch_size, self.hidden_size))


class MPLUGTextTester:
    """Text side of the tiny mPLUG: questions / captions of `seq_length` tokens, the second half of each batch
    padded."""

    def __init__(
        self,
        parent,
        batch_size=3,
        seq_length=7,
        vocab_size=99 + 500,  # box tokens 500.. sit inside the vocabulary
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        num_hidden_layers=1,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.num_hidden_layers = num_hidden_layers  # the text encoder's (get_text_features)
        self.seq_length = seq_length
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings

    def get_config_dict(self):
        return dict(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )

    def prepare_config_and_inputs_for_common(self):
        input_ids, attention_mask = self.token_ids_and_mask()
        return None, {"input_ids": input_ids, "attention_mask": attention_mask}

    def token_ids_and_mask(self):
        # ids in [1, vocab) start with [CLS]=101 (the pad id 0 never appears inside a sequence)
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 1) + 1
        input_ids[:, 0] = 101
        attention_mask = torch.ones_like(input_ids)
        for row in range(self.batch_size // 2, self.batch_size):
            attention_mask[row, self.seq_length - 2 - row % 2 :] = 0
        input_ids = input_ids.masked_fill(attention_mask == 0, 0)
        return input_ids, attention_mask


class MPLUGModelTester:
    """The smallest mPLUG with the skip connection: 1 text-encoder layer and 2 fusion layers (stride 1: layer 0
    co-attention, layer 1 connected) make a 3-block multimodal encoder; the ViT and the decoder get 3 blocks too, so
    that every stack has `num_hidden_layers` = 3 (the common tests take one count for encoder and decoder)."""

    def __init__(self, parent, batch_size=3, is_training=True, text_kwargs=None, vision_kwargs=None):
        self.parent = parent
        self.batch_size = batch_size
        self.is_training = is_training
        vision_kwargs = {"num_hidden_layers": 3, **(vision_kwargs or {})}
        self.vision_model_tester = MPLUGVisionModelTester(parent, batch_size=batch_size, **vision_kwargs)
        self.text_encoder_layers = 1
        text_kwargs = {"num_hidden_layers": self.text_encoder_layers, **(text_kwargs or {})}
        self.text_model_tester = MPLUGTextTester(parent, batch_size=batch_size, **text_kwargs)
        self.fusion_layers = 2
        self.stride_layer = 1
        self.decoder_layers = 3
        self.num_hidden_layers = self.text_encoder_layers + self.fusion_layers
        self.hidden_size = self.text_model_tester.hidden_size
        self.num_attention_heads = self.text_model_tester.num_attention_heads
        self.vocab_size = self.text_model_tester.vocab_size
        self.seq_length = self.text_model_tester.seq_length
        self.image_size = self.vision_model_tester.image_size
        self.patch_size = self.vision_model_tester.patch_size
        self.num_image_tokens = self.vision_model_tester.seq_length

    def get_config(self):
        return MPLUGConfig(
            vision_config=self.vision_model_tester.get_vision_config().to_dict(),
            text_config=self.text_model_tester.get_config_dict(),
            text_encoder_layers=self.text_encoder_layers,
            fusion_layers=self.fusion_layers,
            stride_layer=self.stride_layer,
            decoder_layers=self.decoder_layers,
            embed_dim=16,
            box_prefix_token_id=500,
            box_bin_start_token_id=501,
            num_box_bins=65,
        )

    def prepare_config_and_inputs(self):
        _, pixel_values = self.vision_model_tester.prepare_config_and_inputs()
        input_ids, attention_mask = self.text_model_tester.token_ids_and_mask()
        return self.get_config(), input_ids, attention_mask, pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask, pixel_values = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


class MPLUGDecoderModelTester(MPLUGModelTester):
    """Inputs of the generating heads: `decoder_input_ids` (`[CLS] ... [SEP]` targets) beside the encoder inputs."""

    def __init__(self, parent, with_question=True, **kwargs):
        super().__init__(parent, **kwargs)
        self.with_question = with_question
        # as long as the question: the eager/sdpa tests give the decoder a mask shaped like the encoder's
        self.decoder_seq_length = self.seq_length
        self.decoder_key_length = self.seq_length
        self.num_hidden_layers = self.decoder_layers
        if not with_question:  # captioning: the encoder is the ViT
            self.encoder_seq_length = self.num_image_tokens
            self.key_length = self.num_image_tokens

    def get_config(self):
        # the config a generating head saves (the heads set it on the config they are built from)
        config = super().get_config()
        config.is_encoder_decoder = True
        return config

    def prepare_config_and_inputs_for_common(self):
        config, inputs = super().prepare_config_and_inputs_for_common()
        # targets as the processor's encode_targets builds them: [CLS] pieces [SEP], the last row one token shorter
        decoder_input_ids = ids_tensor([self.batch_size, self.decoder_seq_length], self.vocab_size - 1) + 1
        decoder_input_ids[:, 0] = config.decoder_start_token_id
        decoder_input_ids[:, -1] = config.eos_token_id
        decoder_attention_mask = torch.ones_like(decoder_input_ids)
        decoder_attention_mask[-1, -1] = 0
        decoder_input_ids[-1, -2] = config.eos_token_id
        inputs["decoder_input_ids"] = decoder_input_ids.masked_fill(decoder_attention_mask == 0, 0)
        inputs["decoder_attention_mask"] = decoder_attention_mask
        if not self.with_question:
            del inputs["input_ids"], inputs["attention_mask"]
        return config, inputs


# ---------------------------------------------------------------------------------------------------------------
# Model tests
# ---------------------------------------------------------------------------------------------------------------


# The costliest common tests (seconds each on a shared 2-core CPU) run in the slow tier (`--runslow -m slow`).
SLOW_TESTS = {
    "test_bc_torch_dtype",
    "test_training_gradient_checkpointing",
    "test_training_gradient_checkpointing_use_reentrant_true",
    "test_training_gradient_checkpointing_use_reentrant_false",
}


def _is_slow(name: str) -> bool:
    # eager vs sdpa in half precision; the fp32 cases stay in the default tier
    return name in SLOW_TESTS or (
        name.startswith("test_eager_matches_sdpa_inference_") and ("fp16" in name or "bf16" in name)
    )


class MPLUGCommonTestBase(ModelTesterMixin):
    """What holds for every mPLUG class."""

    test_resize_embeddings = True
    test_torch_exportable = False  # ExportTesterMixin is not in the sdist (see transformers_common/harness.py)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in dir(cls):
            if _is_slow(name) and callable(getattr(cls, name)):
                test = getattr(cls, name)

                @functools.wraps(test)
                def slow_test(self, *args, _test=test, **kwargs):
                    return _test(self, *args, **kwargs)

                setattr(cls, name, pytest.mark.slow(slow_test))

    @unittest.skip(reason=NO_GENERATION_SUITE)
    def test_generation_tester_mixin_inheritance(self):
        pass


class MPLUGCompositeTestBase(MPLUGCommonTestBase):
    """The classes built on MPLUGConfig (vision + text encoder + fusion (+ decoder))."""

    _is_composite = True
    # the encoder inputs beside the main input that the eager/sdpa/padding tests must pass on
    additional_model_inputs = ["pixel_values"]

    @unittest.skip(
        reason="mPLUG's smallest multimodal encoder with its skip connection has 3 blocks (1 text-encoder layer, a "
        "co-attention and a connected fusion layer), like the models transformers lists in this test's exceptions"
    )
    def test_num_layers_is_small(self):
        pass

    def _labels_for(self, model_class, inputs_dict):
        return {}

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:
            inputs_dict.update(self._labels_for(model_class, inputs_dict))
        return inputs_dict


BASE_MODEL_NO_LOSS = (
    "a base model without a loss: transformers skips base models here by looking them up in its static "
    "MODEL_MAPPING_NAMES, which cannot list classes registered at import"
)


class MPLUGBaseModelTestMixin:
    @unittest.skip(reason=BASE_MODEL_NO_LOSS)
    def test_training(self):
        pass

    @unittest.skip(reason=BASE_MODEL_NO_LOSS)
    def test_training_gradient_checkpointing(self):
        pass

    @unittest.skip(reason=BASE_MODEL_NO_LOSS)
    def test_training_gradient_checkpointing_use_reentrant_true(self):
        pass

    @unittest.skip(reason=BASE_MODEL_NO_LOSS)
    def test_training_gradient_checkpointing_use_reentrant_false(self):
        pass


class MPLUGVisionModelTest(MPLUGBaseModelTestMixin, MPLUGCommonTestBase, unittest.TestCase):
    all_model_classes = (MPLUGVisionModel,)
    test_resize_embeddings = False  # a ViT has no token embeddings
    has_attentions = True

    def setUp(self):
        self.model_tester = MPLUGVisionModelTester(self)
        self.config_tester = ConfigTester(
            self, config_class=MPLUGVisionConfig, has_text_modality=False, hidden_size=37
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    @unittest.skip(reason="MPLUGVisionModel takes pixel_values, not inputs_embeds (as BLIP's vision model)")
    def test_inputs_embeds(self):
        pass

    def test_model_get_set_embeddings(self):
        # as transformers' BLIP / CLIP vision tests: a ViT's input embedding is its patch convolution, not a table
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), torch.nn.Module)
            output_embeddings = model.get_output_embeddings()
            self.assertTrue(output_embeddings is None or isinstance(output_embeddings, torch.nn.Linear))

    @unittest.skip(reason="MPLUGVisionModel takes pixel_values, not inputs_embeds (as BLIP's vision model)")
    def test_inputs_embeds_matches_input_ids(self):
        pass


class MPLUGModelTest(MPLUGBaseModelTestMixin, MPLUGCompositeTestBase, unittest.TestCase):
    all_model_classes = (MPLUGModel,)

    def setUp(self):
        self.model_tester = MPLUGModelTester(self)
        self.config_tester = ConfigTester(self, config_class=MPLUGConfig, has_text_modality=False)
        self.text_config_tester = ConfigTester(self, config_class=MPLUGTextConfig, hidden_size=37)

    def test_config(self):
        self.config_tester.run_common_tests()
        self.text_config_tester.run_common_tests()


class MPLUGGenerationHeadTestMixin:
    """What holds for the generating heads (captioning, VQA): targets are the decoder inputs, padding ignored."""

    def _labels_for(self, model_class, inputs_dict):
        ids = inputs_dict["decoder_input_ids"]
        return {"labels": ids.masked_fill(inputs_dict["decoder_attention_mask"] == 0, -100)}

    @unittest.skip(
        reason="the generating heads keep transformers' fixed Seq2SeqLMOutput fields (test_attention_outputs counts "
        "them); the vision tower's output is the encoder's: `encoder_*` for captioning, whose encoder is the ViT, and "
        "`image_outputs` of MPLUGModel's output (`model.get_encoder()(...)`) for VQA"
    )
    def test_multimodal_outputs_are_returned(self):
        pass


class MPLUGForCaptioningTest(MPLUGGenerationHeadTestMixin, MPLUGCompositeTestBase, unittest.TestCase):
    all_model_classes = (MPLUGForCaptioning,)
    is_encoder_decoder = True
    additional_model_inputs = []  # the main input is pixel_values

    def setUp(self):
        self.model_tester = MPLUGDecoderModelTester(self, with_question=False)

    CAPTION_HAS_NO_INPUT_IDS = (
        "MPLUGForCaptioning's only token input is decoder_input_ids (images in, caption out); the resize tests write "
        "into inputs_dict['input_ids'] unconditionally (caption-head resizing: tests/test_contract.py)"
    )

    @unittest.skip(
        reason="captioning is the vision tower + the decoder (the original caption model never runs the text encoder "
        "or fusion), so it has no MPLUGModel base model, as BLIP's BlipForConditionalGeneration"
    )
    def test_model_base_model_prefix(self):
        pass

    @unittest.skip(reason=CAPTION_HAS_NO_INPUT_IDS)
    def test_resize_embeddings_untied(self):
        pass

    @unittest.skip(reason=CAPTION_HAS_NO_INPUT_IDS)
    def test_resize_tokens_embeddings(self):
        pass


class MPLUGForQuestionAnsweringTest(MPLUGGenerationHeadTestMixin, MPLUGCompositeTestBase, unittest.TestCase):
    all_model_classes = (MPLUGForQuestionAnswering,)
    is_encoder_decoder = True

    @unittest.skip(
        reason="the decoder attends to the memory [image tokens; question] (key length num_image_tokens + "
        "text_length) while the encoder's first self-attention spans the question: the test takes one encoder key "
        "length for both (VQA attention shapes: tests/test_contract.py)"
    )
    def test_attention_outputs(self):
        pass

    def setUp(self):
        self.model_tester = MPLUGDecoderModelTester(self, with_question=True)


class MPLUGNoSingleStackTestMixin:
    """Heads whose output is not one encoder pass (as CLIP's and BLIP's retrieval models): their towers' states are
    tested on MPLUGVisionModel and MPLUGModel."""

    NO_SINGLE_STACK = (
        "no single stack of hidden states: the output combines several encoder passes (the towers' own outputs ride "
        "in image_outputs / text_outputs); hidden states and attentions are tested in MPLUGVisionModelTest and "
        "MPLUGModelTest, as CLIP's and BLIP's retrieval tests do"
    )

    @unittest.skip(reason=NO_SINGLE_STACK)
    def test_hidden_states_output(self):
        pass

    @unittest.skip(reason=NO_SINGLE_STACK)
    def test_attention_outputs(self):
        pass

    @unittest.skip(reason=NO_SINGLE_STACK)
    def test_retain_grad_hidden_states_attentions(self):
        pass


class MPLUGForRetrievalTest(MPLUGNoSingleStackTestMixin, MPLUGCompositeTestBase, unittest.TestCase):
    all_model_classes = (MPLUGForRetrieval,)

    def setUp(self):
        self.model_tester = MPLUGModelTester(self)

    def _labels_for(self, model_class, inputs_dict):
        return {"return_loss": True}


class MPLUGForGroundingTest(MPLUGCompositeTestBase, unittest.TestCase):
    all_model_classes = (MPLUGForGrounding,)

    def setUp(self):
        self.model_tester = MPLUGModelTester(self)

    def _labels_for(self, model_class, inputs_dict):
        # the same boxes on every call (tuple vs dict, save vs load compare two calls)
        generator = torch.Generator().manual_seed(0)
        batch_size = inputs_dict["input_ids"].shape[0]
        centre = torch.rand(batch_size, 2, generator=generator) * 0.5 + 0.25
        size = torch.rand(batch_size, 2, generator=generator) * 0.4 + 0.1
        return {"labels": torch.cat([centre, size], dim=-1)}  # (cx, cy, w, h) in [0, 1]


class MPLUGForPreTrainingTest(MPLUGNoSingleStackTestMixin, MPLUGCompositeTestBase, unittest.TestCase):
    all_model_classes = (MPLUGForPreTraining,)

    def setUp(self):
        self.model_tester = MPLUGModelTester(self)

    def _labels_for(self, model_class, inputs_dict):
        input_ids = inputs_dict["input_ids"]
        mlm_input_ids = input_ids.clone()
        mlm_input_ids[:, 1] = 103  # [MASK]
        mlm_labels = torch.full_like(input_ids, -100)
        mlm_labels[:, 1] = input_ids[:, 1]
        return {
            "mlm_input_ids": mlm_input_ids,
            "mlm_labels": mlm_labels,
            "prefix_input_ids": input_ids[:, :3],
            "prefix_attention_mask": inputs_dict["attention_mask"][:, :3],
            "labels": torch.tensor([[101, 40, 102]]).expand(input_ids.shape[0], -1).clone(),
        }


# ---------------------------------------------------------------------------------------------------------------
# Image processor and processor
# ---------------------------------------------------------------------------------------------------------------


class MPLUGImageProcessingTester(ImageProcessingTester):
    def __init__(self, parent, **kwargs):
        kwargs.setdefault("do_resize", True)
        kwargs.setdefault("size", {"height": 20, "width": 20})
        kwargs.setdefault("do_normalize", True)
        kwargs.setdefault("image_mean", [0.48145466, 0.4578275, 0.40821073])
        kwargs.setdefault("image_std", [0.26862954, 0.26130258, 0.27577711])
        kwargs.setdefault("do_convert_rgb", True)
        super().__init__(parent, min_resolution=30, max_resolution=80, **kwargs)

    def _get_image_processing_classes(self):
        # transformers finds a model's image processors from the test file's folder name; mPLUG is registered at
        # import instead
        return {"pil": MPLUGImageProcessor}

    def expected_output_image_shape(self, images):
        return self.num_channels, self.size["height"], self.size["width"]


class MPLUGImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = MPLUGImageProcessingTester

    @unittest.skip(
        reason="transformers' rule for image processors added to its own repository; mplug_hf runs without "
        "torchvision (README) and its PIL backend is the original transform, bit for bit"
    )
    def test_new_models_require_torchvision_backend(self):
        pass

    def test_image_processor_properties(self):
        for image_processing_class in self.image_processing_classes.values():
            image_processor = image_processing_class(**self.image_processor_dict)
            for name in ("do_resize", "size", "do_normalize", "image_mean", "image_std", "do_convert_rgb"):
                self.assertTrue(hasattr(image_processor, name), name)


_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "lower", "newer", "upper", "older", "longer", "string", "a", "the", "what", "is", "?", ".", "##er", "low", "new",
]  # fmt: skip


class MPLUGProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = MPLUGProcessor

    @staticmethod
    def prepare_processor_dict():
        # The common tests compare the processor's text with the tokenizer's own `[CLS] text [SEP]`; the default
        # "original" convention (`[CLS] text`, documented on MPLUGProcessor, tested in tests/test_processing.py) is
        # the released weights' training format, so the suite runs the processor with the BERT convention.
        return {"text_convention": "bert"}

    @classmethod
    def _setup_tokenizer(cls):
        folder = Path(tempfile.mkdtemp())
        (folder / "vocab.txt").write_text("\n".join(_VOCAB) + "\n")
        return BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=512)

    @classmethod
    def _setup_image_processor(cls):
        return MPLUGImageProcessor(size={"height": 32, "width": 32})
