"""
Pipelines for mPLUG.

- `visual-question-answering` (alias `vqa`): transformers 5 removed this task; importing `mplug_hf` lifts that one
  removal and registers [`VisualQuestionAnsweringPipeline`] for it. It serves any generative model registered for
  `AutoModelForVisualQuestionAnswering` (mPLUG, BLIP, ...).
- [`VisualGroundingPipeline`]: referring-expression grounding with [`MPLUGForGrounding`], built directly (no
  transformers task fits it).

Captioning and zero-shot classification need no code here: transformers' own `image-text-to-text` and
`zero-shot-image-classification` pipelines run `MPLUGForCaptioning` and `MPLUGForRetrieval`.
"""

from transformers import AutoModelForVisualQuestionAnswering, GenerationConfig, Pipeline
from transformers.models.auto.modeling_auto import MODEL_FOR_VISUAL_QUESTION_ANSWERING_MAPPING
from transformers.pipelines import PIPELINE_REGISTRY, REMOVED_TASKS

from .image_processing_mplug import load_image
from .processing_mplug import MPLUGProcessor
from .scoring import rank_answers, score_yes_no
from .validation import is_head


TASK = "visual-question-answering"
TASK_ALIAS = "vqa"
# The original's `k_test`: candidates re-scored by `rank_answers` after the first-token preselection.
DEFAULT_RESCORED_CANDIDATES = 128


def _load_pipeline_image(image):
    """A path, PIL image, array or tensor → PIL RGB; URLs are refused rather than fetched."""
    if image is None:
        raise ValueError("an image is required: pass a path, a PIL image, a numpy array or a tensor")
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        raise ValueError(f"URLs are not fetched ({image}); download the image and pass its path or a PIL image")
    return load_image(image)


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _validate_question(question) -> str:
    if not isinstance(question, str):
        raise ValueError(f"the question must be a string, got {type(question).__name__}")
    if not question.strip():
        raise ValueError("the question is empty")
    return question


def _pair_inputs(
    image, question, text_name: str = "question", texts_name: str = "questions"
) -> tuple[list[dict], bool]:
    """Normalise the call forms to a list of {"image", "question"} items; also says whether one item was given.
    `text_name` / `texts_name` are what the messages call a text and several (the grounding pipeline's queries)."""
    if question is None:
        if isinstance(image, dict):
            return [image], True
        if isinstance(image, (list, tuple)) and image and all(isinstance(item, dict) for item in image):
            return list(image), False
        raise ValueError(
            f"give a {text_name}: pipe(image, {text_name}=...) or pipe({{'image': ..., 'question': ...}}) (or a list "
            "of those)"
        )
    images_listed, questions_listed = isinstance(image, (list, tuple)), isinstance(question, (list, tuple))
    for name, value, listed in (("image", image, images_listed), (text_name, question, questions_listed)):
        if listed and not value:
            raise ValueError(f"the {name} list is empty; give at least one")
    if images_listed and questions_listed:
        if len(image) != len(question):
            raise ValueError(f"{len(image)} images but {len(question)} {texts_name}; pass as many of each")
        return [{"image": i, "question": q} for i, q in zip(image, question)], False
    if images_listed:
        return [{"image": i, "question": question} for i in image], False
    if questions_listed:
        return [{"image": image, "question": q} for q in question], False
    return [{"image": image, "question": question}], True


def _serves_visual_question_answering(model) -> bool:
    """Whether `model` is the class registered for `AutoModelForVisualQuestionAnswering` (in process or remote)."""
    try:
        if isinstance(model, MODEL_FOR_VISUAL_QUESTION_ANSWERING_MAPPING[type(model.config)]):
            return True
    except KeyError:
        pass
    remote_class = (getattr(model.config, "auto_map", None) or {}).get("AutoModelForVisualQuestionAnswering")
    return remote_class is not None and remote_class.rsplit(".", 1)[-1] == type(model).__name__


class VisualQuestionAnsweringPipeline(Pipeline):
    """
    Visual question answering with a generative VQA model (`MPLUGForQuestionAnswering`, `BlipForQuestionAnswering`,
    ...). Restores `pipeline("visual-question-answering")`, which transformers 5 removed.

    ```python
    >>> import mplug_hf  # registers the task
    >>> from transformers import pipeline

    >>> vqa = pipeline("visual-question-answering", model="path/to/mplug-vqa")
    >>> vqa(image="cat.jpg", question="what animal is this?", top_k=2)
    [{'answer': 'cat', 'score': 0.93}, {'answer': 'kitten', 'score': 0.03}]
    ```

    Free answers come from `generate()` (the model's generation config: beam search for converted mPLUG checkpoints;
    generation parameters such as `num_beams` or `max_new_tokens` may be passed at construction or call). Each
    answer's score is its sequence probability: the exponential of the summed token log-probabilities that generation
    recorded; answers that decode to the same text are merged (probabilities added), so fewer than `top_k` may come
    back. With `candidate_answers=[...]` the model ranks that closed list instead (`rank_answers`, mPLUG only) and the
    scores are the softmax over the re-scored candidates.

    Images are paths, PIL images, numpy arrays or tensors; URLs are not fetched.
    """

    _load_processor = None
    _load_image_processor = None
    _load_feature_extractor = False
    _load_tokenizer = None
    _pipeline_calls_generate = True
    # Used where neither the caller nor the model's generation config bounds the length (the original: 10 tokens).
    _default_generation_config = GenerationConfig(max_new_tokens=10)
    # `top_k` is the number of answers here, not the sampling parameter.
    _non_generation_params = ("top_k",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not _serves_visual_question_answering(self.model):
            raise ValueError(
                f"{type(self.model).__name__} is not a visual question answering model; pass the class registered "
                "for AutoModelForVisualQuestionAnswering (e.g. MPLUGForQuestionAnswering)"
            )
        if not self.model.can_generate():
            raise ValueError(
                f"{type(self.model).__name__} cannot generate answers; this pipeline needs a generative VQA model"
            )
        if self.processor is None and (self.tokenizer is None or self.image_processor is None):
            raise ValueError("pass a processor, or a tokenizer and an image processor")
        if self.model.config.model_type == "mplug":
            # mPLUG's questions are encoded with the processor's convention (`[CLS] q`, no [SEP], as the released
            # weights were trained); a bare tokenizer, or another model's processor, would add the [SEP]
            if self.processor is None:
                self.processor = MPLUGProcessor(self.image_processor, self.tokenizer)
            elif not hasattr(self.processor, "encode_text"):
                raise ValueError(
                    f"an mPLUG model needs its MPLUGProcessor, got {type(self.processor).__name__}: it encodes the "
                    "questions as the model was trained ([CLS] question)"
                )

    def _sanitize_parameters(
        self,
        top_k=None,
        candidate_answers=None,
        num_rescored_candidates=None,
        generate_kwargs=None,
        yes_no=None,
        **kwargs,
    ):
        generation_keys = {key for key in vars(GenerationConfig()) if not key.startswith("_")} | {"generation_config"}
        unknown = sorted(set(kwargs) - generation_keys)
        if unknown:
            raise ValueError(f"unknown parameters for the visual-question-answering pipeline: {unknown}")
        if kwargs:
            generate_kwargs = {**(generate_kwargs or {}), **kwargs}
        forward_params, postprocess_params = {}, {}
        if top_k is not None:
            if not _is_positive_int(top_k):
                raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
            forward_params["top_k"] = top_k
            postprocess_params["top_k"] = top_k
        if candidate_answers is not None:
            forward_params["candidates"] = self._encode_candidates(candidate_answers)
            postprocess_params["candidate_answers"] = list(candidate_answers)
        if yes_no:
            if candidate_answers is not None:
                raise ValueError("pass either yes_no=True or candidate_answers, not both")
            if not is_head(self.model, "MPLUGForQuestionAnswering"):
                raise ValueError(
                    f"yes_no needs a VQA model (MPLUGForQuestionAnswering), got {type(self.model).__name__}"
                )
            forward_params["yes_no"] = True
            postprocess_params["yes_no"] = True
        if num_rescored_candidates is not None:
            if not _is_positive_int(num_rescored_candidates):
                raise ValueError(
                    f"num_rescored_candidates must be a positive integer, got {num_rescored_candidates!r}"
                )
            forward_params["num_rescored_candidates"] = num_rescored_candidates
        if generate_kwargs is not None:
            forward_params["generate_kwargs"] = dict(generate_kwargs)
        return {}, forward_params, postprocess_params

    def _encode_candidates(self, candidate_answers):
        if not is_head(self.model, "MPLUGForQuestionAnswering"):
            raise ValueError(
                f"candidate_answers needs a VQA model (MPLUGForQuestionAnswering), got {type(self.model).__name__}"
            )
        if not hasattr(self.processor, "encode_targets"):
            raise ValueError("candidate_answers needs the model's processor (MPLUGProcessor) to encode the answers")
        if isinstance(candidate_answers, str) or not candidate_answers:
            raise ValueError("candidate_answers must be a non-empty list of strings")
        # a repeated answer would split its probability between its copies
        repeated = sorted({answer for answer in candidate_answers if list(candidate_answers).count(answer) > 1})
        if repeated:
            raise ValueError(f"candidate_answers repeats {repeated}; give each answer once")
        # `encode_targets` rejects empty or non-string answers with a message naming them.
        return self.processor.encode_targets(list(candidate_answers))

    def __call__(self, image=None, question=None, **kwargs):
        """
        Args:
            image: an image (path, PIL image, array, tensor), a list of them, a `{"image", "question"}` dict or a
                list of such dicts. One image with several questions, or several images with one question, pair up;
                two lists pair item by item.
            question (`str` or `list[str]`): the question(s).
            top_k (`int`, *optional*, defaults to 1): answers returned per question.
            candidate_answers (`list[str]`, *optional*): rank this closed answer list instead of generating.
            yes_no (`bool`, *optional*): answer "yes" / "no" with P(yes) from the first answer token
                ([`~MPLUGForQuestionAnswering.score_yes_no`], the text-to-image judge's score).
            num_rescored_candidates (`int`, *optional*): candidates re-scored after the first-token preselection
                (default: all of them, at most 128 as the original).
            batch_size (`int`, *optional*): questions run through the model together.
            Generation parameters (`num_beams`, `max_new_tokens`, ...) go to `generate()`.

        Returns:
            `[{"answer": str, "score": float}, ...]` best first, or one such list per question for several questions.
        """
        items, single = _pair_inputs(image, question)
        results = super().__call__(items, **kwargs)
        return results[0] if single else results

    def preprocess(self, inputs):
        if not isinstance(inputs, dict) or "image" not in inputs or "question" not in inputs:
            raise ValueError(f"each input needs an 'image' and a 'question', got {inputs!r}")
        image = _load_pipeline_image(inputs["image"])
        question = _validate_question(inputs["question"])
        if self.processor is not None:
            model_inputs = self.processor(images=image, text=question, return_tensors="pt")
        else:
            model_inputs = self.image_processor(images=image, return_tensors="pt")
            model_inputs.update(self.tokenizer(question, return_tensors="pt"))
        return model_inputs.to(self.dtype)

    def _forward(
        self, model_inputs, top_k=1, candidates=None, num_rescored_candidates=None, generate_kwargs=None, yes_no=False
    ):
        if yes_no:
            yes_id, no_id = (self.tokenizer or self.processor.tokenizer).convert_tokens_to_ids(["yes", "no"])
            p_yes = score_yes_no(
                self.model,
                input_ids=model_inputs["input_ids"],
                pixel_values=model_inputs["pixel_values"],
                attention_mask=model_inputs.get("attention_mask"),
                yes_token_id=yes_id,
                no_token_id=no_id,
            )
            return {"p_yes": p_yes}
        if candidates is not None:
            return self._rank(model_inputs, candidates, top_k, num_rescored_candidates)
        generate_kwargs = {} if generate_kwargs is None else generate_kwargs
        overrides = {"num_return_sequences": top_k, "output_scores": True, "return_dict_in_generate": True}
        settings = self._get_set_generation_params({**self._generate_kwargs, **generate_kwargs})
        if not settings.get("do_sample") and settings.get("num_beams", 1) < top_k:
            overrides["num_beams"] = top_k  # beam search returns at most num_beams distinct answers
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs, **overrides)
        outputs = self.model.generate(**model_inputs, **generate_kwargs)
        token_log_probs = self.model.compute_transition_scores(
            outputs.sequences, outputs.scores, outputs.get("beam_indices"), normalize_logits=True
        )
        answer_ids = outputs.sequences[:, -token_log_probs.shape[1] :]
        # Rows that finished early are padded (greedy search records a score there): keep the answer up to its end.
        pad_token_id = settings.get("pad_token_id", getattr(self.tokenizer, "pad_token_id", None))
        if pad_token_id is not None:
            trailing_padding = (answer_ids == pad_token_id).long().flip(1).cumprod(1).flip(1).bool()
            token_log_probs = token_log_probs.masked_fill(trailing_padding, 0.0)
        batch_size = model_inputs["pixel_values"].shape[0]
        return {
            "answer_ids": answer_ids.reshape(batch_size, top_k, -1),
            "log_probs": token_log_probs.sum(dim=1).reshape(batch_size, top_k),
        }

    def _rank(self, model_inputs, candidates, top_k, num_rescored_candidates):
        num_candidates = candidates["input_ids"].shape[0]
        rescored = num_rescored_candidates
        if rescored is None:
            rescored = min(num_candidates, DEFAULT_RESCORED_CANDIDATES)
        if not 1 <= rescored <= num_candidates:
            raise ValueError(f"num_rescored_candidates={rescored} must be between 1 and {num_candidates}")
        candidates = candidates.to(self.device)
        indices, probs = rank_answers(
            self.model,
            input_ids=model_inputs["input_ids"],
            pixel_values=model_inputs["pixel_values"],
            attention_mask=model_inputs.get("attention_mask"),
            candidate_ids=candidates["input_ids"],
            candidate_attention_mask=candidates["attention_mask"],
            k=rescored,
        )
        return {"candidate_indices": indices[:, :top_k], "probs": probs[:, :top_k]}

    def postprocess(self, model_outputs, top_k=1, candidate_answers=None, yes_no=False):
        if yes_no:
            p_yes = model_outputs["p_yes"][0].item()
            ranked = sorted([("yes", p_yes), ("no", 1.0 - p_yes)], key=lambda pair: pair[1], reverse=True)
            return [{"answer": answer, "score": score} for answer, score in ranked[:top_k]]
        if candidate_answers is not None:
            indices, probs = model_outputs["candidate_indices"][0].tolist(), model_outputs["probs"][0].tolist()
            return [{"answer": candidate_answers[i], "score": p} for i, p in zip(indices, probs)]
        decoder = self.processor if self.processor is not None else self.tokenizer
        answers = decoder.batch_decode(model_outputs["answer_ids"][0], skip_special_tokens=True)
        scores: dict[str, float] = {}
        # float64: long answers of uncertain models have probabilities below float32's range.
        for answer, log_prob in zip(answers, model_outputs["log_probs"][0].double().exp().tolist()):
            answer = answer.strip()
            scores[answer] = scores.get(answer, 0.0) + log_prob
        ranked = sorted(scores.items(), key=lambda pair: pair[1], reverse=True)[:top_k]
        return [{"answer": answer, "score": score} for answer, score in ranked]


class VisualGroundingPipeline(Pipeline):
    """
    Referring-expression grounding with [`MPLUGForGrounding`]: the box of the region a query describes, in pixels of
    the input image. No transformers task fits grounding, so build it directly:

    ```python
    >>> from mplug_hf import MPLUGForGrounding, MPLUGProcessor, VisualGroundingPipeline

    >>> grounder = VisualGroundingPipeline(
    ...     model=MPLUGForGrounding.from_pretrained("path/to/mplug-grounding"),
    ...     processor=MPLUGProcessor.from_pretrained("path/to/mplug-grounding"),
    ... )
    >>> grounder("street.jpg", query="the man on the left")
    {'box': {'xmin': 12.0, 'ymin': 40.5, 'xmax': 180.2, 'ymax': 470.0}}
    ```

    Queries are encoded with the processor's convention (`[CLS] query` for the original one, as the grounding collator
    and the evaluation runner encode them), at most `max_query_length` (20) tokens.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not hasattr(self.model, "decode_boxes_greedily"):
            raise ValueError(f"{type(self.model).__name__} is not a grounding model; use MPLUGForGrounding")
        if self.processor is None:
            raise ValueError("pass the model's processor (MPLUGProcessor)")

    def _sanitize_parameters(self, max_query_length=None, **kwargs):
        if kwargs:
            raise ValueError(f"unknown parameters for the grounding pipeline: {sorted(kwargs)}")
        preprocess_params = {}
        if max_query_length is not None:
            if not _is_positive_int(max_query_length) or max_query_length < 2:
                raise ValueError(
                    f"max_query_length must be an integer >= 2 ([CLS] and the query), got {max_query_length!r}"
                )
            preprocess_params["max_query_length"] = max_query_length
        return preprocess_params, {}, {}

    def __call__(self, image=None, query=None, **kwargs):
        """
        Args:
            image: an image (path, PIL image, array, tensor) or a list of them.
            query (`str` or `list[str]`): the referring expression(s); lists pair up as in the VQA pipeline.
            max_query_length (`int`, *optional*, defaults to 20): query tokens, special tokens included.

        Returns:
            `{"box": {"xmin", "ymin", "xmax", "ymax"}}` per query (a list of them for several queries).
        """
        items, single = _pair_inputs(image, query, text_name="query", texts_name="queries")
        items = [{"image": item["image"], "query": item["question"]} for item in items]
        results = super().__call__(items, **kwargs)
        return results[0] if single else results

    def preprocess(self, inputs, max_query_length=20):
        image = _load_pipeline_image(inputs["image"])
        query = inputs["query"]
        if not isinstance(query, str) or not query.strip():
            raise ValueError("the query must be a non-empty string")
        model_inputs = self.processor.image_processor(image, mode="grounding", return_tensors="pt")
        # the processor's convention (`[CLS] query`), as the grounding collator and the evaluation runner encode it
        model_inputs.update(self.processor.encode_text(query, max_length=max_query_length))
        return model_inputs.to(self.dtype)

    def _forward(self, model_inputs):
        boxes = self.model(
            input_ids=model_inputs["input_ids"],
            pixel_values=model_inputs["pixel_values"],
            attention_mask=model_inputs["attention_mask"],
        ).pred_boxes
        return {"boxes": self.processor.post_process_grounding(boxes, model_inputs["image_sizes"])}

    def postprocess(self, model_outputs):
        xmin, ymin, xmax, ymax = model_outputs["boxes"][0].tolist()
        return {"box": {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax}}


def register_visual_question_answering_pipeline() -> None:
    """Lift transformers 5's removal of `visual-question-answering` / `vqa` (only those) and register our pipeline."""
    if TASK in PIPELINE_REGISTRY.supported_tasks:
        return
    for task in (TASK, TASK_ALIAS):
        REMOVED_TASKS.pop(task, None)
    PIPELINE_REGISTRY.register_pipeline(
        TASK,
        pipeline_class=VisualQuestionAnsweringPipeline,
        pt_model=AutoModelForVisualQuestionAnswering,
        type="multimodal",
    )
    PIPELINE_REGISTRY.task_aliases[TASK_ALIAS] = TASK


register_visual_question_answering_pipeline()


__all__ = ["VisualGroundingPipeline", "VisualQuestionAnsweringPipeline", "register_visual_question_answering_pipeline"]
