"""Import transformers' common test mixins from the sdist fetched by `fetch_transformers_tests.py`.

The sdist's `tests/` holds the mixins but not four small modules they import from the transformers repository
(`tests/exporters/test_export.py`, `tests/generation/test_utils.py`, `tests/utils/test_configuration_utils.py`,
`utils/fetch_hub_objects_for_ci.py`). This module stands in for them with the least that lets the mixins import,
each stand-in saying what it leaves out:

- `ExportTesterMixin` (torch.export tests): empty, so no export tests run.
- `GenerationTesterMixin` (the generate() suite): a marker only; the mPLUG testers do not inherit it, and the one
  common test that checks the inheritance is skipped with that reason (generation is tested in
  tests/test_generation.py).
- `config_common_kwargs`: non-default values for the attributes every `PreTrainedConfig` of transformers 5.24 has
  (the repository's dict, minus the keys 5.x configs no longer take).
- `url_to_local_path`: the Hub is unreachable here, so image URLs map to a deterministic local stand-in image
  (the suites use them only as generic RGB inputs); other URLs are returned unchanged.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import tempfile
import types
import warnings
from pathlib import Path

import pytest

from .fetch_transformers_tests import installed_version, is_fetched, source_root


PACKAGE = "hf_common_tests"


def _module(name: str, path: list[str] | None = None, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    if path is not None:
        module.__path__ = path
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _config_common_kwargs() -> dict:
    return {
        "return_dict": False,
        "output_hidden_states": True,
        "output_attentions": True,
        "dtype": "float16",
        "chunk_size_feed_forward": 5,
        "architectures": ["BertModel"],
        "id2label": {0: "label"},
        "label2id": {"label": "0"},
        "problem_type": "regression",
    }


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def url_to_local_path(url, return_url_if_not_found: bool = True):
    if not isinstance(url, str) or not url.lower().startswith("http"):
        return url
    if not url.lower().endswith(_IMAGE_SUFFIXES):
        return url
    import numpy as np
    from PIL import Image

    digest = hashlib.sha1(url.encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / "mplug-hf-common-test-images"
    folder.mkdir(exist_ok=True)
    path = folder / f"{digest}.png"
    if not path.is_file():
        rng = np.random.default_rng(int(digest, 16) % 2**32)
        Image.fromarray(rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)).save(path)
    return str(path)


def _install_stand_ins(tests_dir: Path) -> None:
    if PACKAGE in sys.modules:
        return
    _module(PACKAGE, [str(tests_dir)])
    _module(f"{PACKAGE}.exporters", [])
    _module(f"{PACKAGE}.exporters.test_export", ExportTesterMixin=type("ExportTesterMixin", (), {}))
    _module(f"{PACKAGE}.generation", [])
    _module(
        f"{PACKAGE}.generation.test_utils",
        GenerationTesterMixin=type(
            "GenerationTesterMixin", (), {"__doc__": "stand-in: not in the transformers sdist"}
        ),
    )
    _module(f"{PACKAGE}.utils", [])
    _module(f"{PACKAGE}.utils.test_configuration_utils", config_common_kwargs=_config_common_kwargs())
    _module("fetch_hub_objects_for_ci", url_to_local_path=url_to_local_path)


def load() -> types.SimpleNamespace:
    """The four common test modules; skips the calling test module when they are absent (fails under CI=true)."""
    root = source_root()
    tests_dir = root / "tests"
    problem = None
    if not is_fetched(root):
        problem = (
            f"transformers {installed_version()} common tests not found in {tests_dir}; run "
            "python tests/transformers_common/fetch_transformers_tests.py (or set MPLUG_TRANSFORMERS_SRC)"
        )
    elif importlib.util.find_spec("parameterized") is None:
        problem = "the transformers common tests need `parameterized`: run fetch_transformers_tests.py"
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{problem} (required under CI)", pytrace=False)
        pytest.skip(problem, allow_module_level=True)
    _install_stand_ins(tests_dir)
    with warnings.catch_warnings():
        # the suites mark tests with transformers' own pytest marks (registered in its repository's conftest)
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        return types.SimpleNamespace(
            modeling=importlib.import_module(f"{PACKAGE}.test_modeling_common"),
            configuration=importlib.import_module(f"{PACKAGE}.test_configuration_common"),
            image_processing=importlib.import_module(f"{PACKAGE}.test_image_processing_common"),
            processing=importlib.import_module(f"{PACKAGE}.test_processing_common"),
            generation_mixin=sys.modules[f"{PACKAGE}.generation.test_utils"].GenerationTesterMixin,
        )
