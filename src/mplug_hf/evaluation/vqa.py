"""Official VQA v2 accuracy (the rules of the VQA challenge's `vqaEval.py`, re-implemented)."""

import re
import warnings
from collections import defaultdict
from collections.abc import Sequence


# Contractions the official script restores on the lower-cased, whitespace-split prediction. Keys with upper-case
# letters can never match (the text is lower-cased first) and "somebody'd" maps to "somebodyd"; both quirks are kept
# so that scores match the official ones.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
]  # fmt: skip
# The official pattern is "(?!<=\d)(\.)(?!\d)": its leading group is a (typo'd) look-ahead that always succeeds in
# front of a period, so only the trailing "not followed by a digit" condition matters.
_PERIOD_STRIP = re.compile(r"\.(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# The official script calls `periodStrip.sub("", text, re.UNICODE)`, which passes re.UNICODE (== 32) as `count`.
_PERIOD_STRIP_MAX_COUNT = int(re.UNICODE)


def _process_punctuation(text: str) -> str:
    processed = text
    for mark in _PUNCTUATION:
        # The decision looks at the original text, the edits accumulate on the processed one (as officially).
        if mark + " " in text or " " + mark in text or _COMMA_BETWEEN_DIGITS.search(text) is not None:
            processed = processed.replace(mark, "")
        else:
            processed = processed.replace(mark, " ")
    return _PERIOD_STRIP.sub("", processed, count=_PERIOD_STRIP_MAX_COUNT)


def _process_digits_and_articles(text: str) -> str:
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES]
    return " ".join(words)


def normalize_vqa_answer(answer: str) -> str:
    """
    Normalizes a predicted answer the way the official VQA evaluation does before comparing it with the human answers.

    Newlines and tabs become spaces, the text is stripped, punctuation is removed or replaced by a space (removed when
    it touches a space or when the text contains a comma between digits), periods not followed by a digit are removed,
    then the text is lower-cased, number words ("none", "zero" ... "ten") become digits, articles are dropped and
    missing apostrophes of common contractions are restored.

    Args:
        answer (`str`): Raw answer, e.g. `"Two dogs."`.

    Returns:
        `str`: Normalized answer, e.g. `"2 dogs"`.
    """
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_digits_and_articles(_process_punctuation(answer))


def _as_text(answer) -> str:
    """Answers as text: numbers (`2`, `2.0`) become `"2"` (annotations with numeric answers score as strings)."""
    if isinstance(answer, str):
        return answer
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        raise ValueError(f"answers must be strings (or numbers), got {answer!r}")
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    return str(answer)


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """
    Official VQA accuracy of one predicted answer.

    The accuracy is the mean, over the leave-one-out subsets of the human answers (10 subsets of 9 answers in VQA v2),
    of `min(1, #answers in the subset equal to the prediction / 3)`. The prediction goes through
    [`normalize_vqa_answer`]; as in the official script, the human answers only get the punctuation step, and only
    when they are not all identical (the released annotations are already normalized).

    Args:
        prediction (`str`): Predicted answer.
        gt_answers (`Sequence[str]`): The human answers of the question (10 in VQA v2).

    Returns:
        `float`: Accuracy in [0, 1], e.g. 0.3 / 0.6 / 0.9 / 1.0 when 1 / 2 / 3 / 4+ of 10 human answers match.

    Raises:
        `ValueError`: If `gt_answers` is empty.
    """
    if len(gt_answers) == 0:
        raise ValueError("`gt_answers` is empty: VQA accuracy needs at least one human answer.")
    gt_answers = [_as_text(answer) for answer in gt_answers]
    prediction = normalize_vqa_answer(_as_text(prediction))
    if len(set(gt_answers)) > 1:
        gt_answers = [_process_punctuation(answer) for answer in gt_answers]
    is_match = [answer == prediction for answer in gt_answers]
    num_matches = sum(is_match)
    # Leaving answer i out leaves `num_matches - is_match[i]` matching answers among the others.
    subset_accuracies = [min(1.0, (num_matches - left_out_match) / 3) for left_out_match in is_match]
    return sum(subset_accuracies) / len(subset_accuracies)


def evaluate_vqa(predictions: Sequence[dict], annotations: Sequence[dict]) -> dict:
    """
    Official VQA v2 accuracy of a set of predictions, overall and per answer type.

    Args:
        predictions (`Sequence[dict]`):
            One `{"question_id": ..., "answer": str}` per annotated question (the official result-file format).
        annotations (`Sequence[dict]`):
            One `{"question_id": ..., "answers": list[str], "answer_type": str}` per question; `answer_type`
            (`"yes/no"`, `"number"` or `"other"` in VQA v2) is optional.

    Returns:
        `dict`: `{"overall": float, "per_answer_type": {answer_type: float}}`, accuracies in percent (not rounded;
        the official script reports them rounded to 2 decimals). Questions without `answer_type` only count in
        `"overall"`.

    Raises:
        `ValueError`: If there are no annotations, if a question id is annotated twice, predicted twice, predicted but
            not annotated or annotated but not predicted, or if a question has no human answers.
    """
    if len(annotations) == 0:
        raise ValueError("`annotations` is empty: there is nothing to evaluate.")
    answer_by_question = {}
    for prediction in predictions:
        question_id = prediction["question_id"]
        if question_id in answer_by_question:
            raise ValueError(f"Question id {question_id!r} is predicted more than once.")
        answer_by_question[question_id] = prediction["answer"]

    annotations = [
        {**a, "answers": [a["answers"]]} if isinstance(a.get("answers"), (str, int, float)) else a for a in annotations
    ]
    single = [a["question_id"] for a in annotations if len(a["answers"]) == 1]
    if single:
        warnings.warn(
            f"{len(single)} of {len(annotations)} questions (e.g. {single[0]!r}) have a single human answer: the VQA v2"
            " accuracy (leave-one-out over the human answers) scores them 0 whatever the prediction; use exact match"
            " for one-answer data",
            UserWarning,
            stacklevel=2,
        )
    annotated_ids = set()
    accuracies = []
    accuracies_by_type = defaultdict(list)
    for annotation in annotations:
        question_id = annotation["question_id"]
        if question_id in annotated_ids:
            raise ValueError(f"Question id {question_id!r} is annotated more than once.")
        annotated_ids.add(question_id)
        if question_id not in answer_by_question:
            raise ValueError(f"Question id {question_id!r} has no prediction.")
        if len(annotation["answers"]) == 0:
            raise ValueError(f"Question id {question_id!r} has an empty list of answers.")
        accuracy = vqa_accuracy(answer_by_question[question_id], annotation["answers"])
        accuracies.append(accuracy)
        if annotation.get("answer_type") is not None:
            accuracies_by_type[annotation["answer_type"]].append(accuracy)

    unannotated_ids = answer_by_question.keys() - annotated_ids
    if unannotated_ids:
        raise ValueError(f"Predictions for question ids without annotation: {sorted(unannotated_ids, key=str)[:10]}.")

    return {
        "overall": 100.0 * sum(accuracies) / len(accuracies),
        "per_answer_type": {
            answer_type: 100.0 * sum(values) / len(values) for answer_type, values in accuracies_by_type.items()
        },
    }
