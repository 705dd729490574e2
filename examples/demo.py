"""The main job: build a small mPLUG, answer a question and caption a picture, save it, reload it through the Auto
classes and check the reloaded model gives the same answers.

The model has random weights (no Hub access is needed or used), so its words are arbitrary word pieces: the demo shows
the whole pipeline — processor, skip-connected fusion, cached generation, the original beam search, save/load.

    python examples/demo.py [--output-dir outputs/demo]
"""

import argparse
import time

import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, AutoModelForVisualQuestionAnswering, AutoProcessor

from mplug_hf import MPLUGConfig, MPLUGForCaptioning, MPLUGForQuestionAnswering, MPLUGImageProcessor, MPLUGProcessor


def demo_image() -> Image.Image:
    """An embedded default picture: a red circle and a blue square on a light background."""
    image = Image.new("RGB", (160, 120), (235, 235, 220))
    draw = ImageDraw.Draw(image)
    draw.ellipse((15, 25, 75, 85), fill=(200, 30, 30))
    draw.rectangle((95, 40, 145, 90), fill=(30, 60, 200))
    return image


def small_config() -> MPLUGConfig:
    """mPLUG-base's layout (S=3, one connected fusion layer) at a width that runs in seconds on a CPU."""
    return MPLUGConfig(
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                           image_size=96, patch_size=16),
        text_config=dict(hidden_size=128, intermediate_size=512, num_attention_heads=4),
        text_encoder_layers=2, fusion_layers=6, stride_layer=3, decoder_layers=2,
    )  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", default="outputs/demo")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = small_config()
    processor = MPLUGProcessor(MPLUGImageProcessor(image_size=config.vision_config.image_size))
    image, question = demo_image(), "what color is the circle?"
    print(f"mPLUG: fusion layers {config.fusion_layers}, stride {config.stride_layer}, connected layers "
          f"{[j for j in range(config.fusion_layers) if config.is_connected_fusion_layer(j)]}")  # fmt: skip

    vqa = MPLUGForQuestionAnswering(config).eval()
    captioner = MPLUGForCaptioning(config).eval()
    inputs = processor(images=image, text=question)
    start = time.perf_counter()
    with torch.no_grad():
        answer_ids = vqa.generate(**inputs, num_beams=3, max_new_tokens=5)
        caption_ids = captioner.generate(pixel_values=inputs["pixel_values"], num_beams=3, max_new_tokens=8)
    original = vqa.generate_original(**inputs, num_beams=3, max_length=5)
    elapsed = time.perf_counter() - start
    answer, caption = processor.decode(answer_ids[0]), processor.decode(caption_ids[0])
    print(f"question: {question!r}\nanswer (random weights): {answer!r}\ncaption (random weights): {caption!r}")
    print(f"original beam search answer: {processor.decode(original.sequences[0, 0])!r} (score {original.scores[0, 0]:.3f})")
    print(f"generation took {elapsed:.2f}s")

    vqa.save_pretrained(f"{args.output_dir}/vqa")
    processor.save_pretrained(f"{args.output_dir}/vqa")
    captioner.save_pretrained(f"{args.output_dir}/caption")
    reloaded_vqa = AutoModelForVisualQuestionAnswering.from_pretrained(f"{args.output_dir}/vqa").eval()
    reloaded_captioner = AutoModelForImageTextToText.from_pretrained(f"{args.output_dir}/caption").eval()
    reloaded_processor = AutoProcessor.from_pretrained(f"{args.output_dir}/vqa")
    inputs = reloaded_processor(images=image, text=question)
    with torch.no_grad():
        same_answer = torch.equal(reloaded_vqa.generate(**inputs, num_beams=3, max_new_tokens=5), answer_ids)
        same_caption = torch.equal(
            reloaded_captioner.generate(pixel_values=inputs["pixel_values"], num_beams=3, max_new_tokens=8), caption_ids
        )
    print(f"saved to {args.output_dir}; reloaded {type(reloaded_vqa).__name__} and {type(reloaded_captioner).__name__}"
          f" through the Auto classes: same answer {same_answer}, same caption {same_caption}")  # fmt: skip
    if not (same_answer and same_caption):
        raise SystemExit("reloaded model disagrees with the saved one")


if __name__ == "__main__":
    main()
