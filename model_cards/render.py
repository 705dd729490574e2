"""
Render the model card of every converted mPLUG checkpoint family (base/large × pretrain, VQA, caption, retrieval,
grounding) from the one template in `mplug_hf.hub.render_model_card`:

    python model_cards/render.py [--namespace NAMESPACE]

The cards land in `model_cards/mplug-<size>-<task>/README.md`, the README of repository `<namespace>/mplug-<size>-<task>`.
"""

import argparse
import os

from mplug_hf.hub import SIZES, TASKS, render_model_card
from mplug_hf.io_utils import atomic_write_text


CARDS_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_NAMESPACE = "mplug-hf"


def family_name(task: str, size: str) -> str:
    return f"mplug-{size}-{task}"


def render_all(namespace: str = DEFAULT_NAMESPACE, cards_dir: str = CARDS_DIR) -> list[str]:
    """Write every family's card; returns their paths."""
    paths = []
    for task in TASKS:
        for size in SIZES:
            name = family_name(task, size)
            path = os.path.join(cards_dir, name, "README.md")
            # atomically: an interrupted render leaves the previous card, never a half-written one
            atomic_write_text(path, str(render_model_card(task, size, f"{namespace}/{name}")))
            paths.append(path)
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="Hub user or organisation of the repositories")
    for written in render_all(parser.parse_args().namespace):
        print(written)
