"""Fetch transformers' own common test suites for the installed transformers version (idempotent).

transformers publishes its model contract as test mixins (`ModelTesterMixin`, `ConfigTester`,
`ImageProcessingTestMixin`, `ProcessorTesterMixin`) in the `tests/` folder of its source distribution. This script
downloads that sdist from PyPI with pip (`pip download --no-binary :all: --no-deps transformers==<installed>`),
extracts only its `tests/` folder into `.cache/transformers-src/transformers-<version>/` (git-ignored; nothing is
copied into the repository) and installs the one extra package those files import (`parameterized`).

Usage: python tests/transformers_common/fetch_transformers_tests.py [--dest DIR] [--force]
The destination can also be set with MPLUG_TRANSFORMERS_SRC (the test module reads the same variable).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DEST = REPO_ROOT / ".cache" / "transformers-src"
MARKER = ".fetched"
# what the common test files import beyond transformers' runtime dependencies and this project's dev extra
TEST_REQUIREMENTS = ["parameterized"]


def installed_version() -> str:
    return importlib.metadata.version("transformers")


def source_root(dest: Path | None = None, version: str | None = None) -> Path:
    """Folder holding the extracted `tests/` of transformers `version` (the installed one by default)."""
    if dest is None:
        dest = Path(os.environ.get("MPLUG_TRANSFORMERS_SRC", DEFAULT_DEST))
    return Path(dest) / f"transformers-{version or installed_version()}"


def is_fetched(root: Path) -> bool:
    return (root / MARKER).is_file() and (root / "tests" / "test_modeling_common.py").is_file()


def _extract_tests(archive: Path, root: Path, version: str) -> None:
    prefix = f"transformers-{version}/tests/"
    staging = Path(tempfile.mkdtemp(prefix="transformers-tests-", dir=root.parent))
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())]
            if not any(m.name == prefix + "test_modeling_common.py" for m in members):
                raise RuntimeError(f"{archive.name} has no {prefix}test_modeling_common.py")
            tar.extractall(staging, members=members, filter="data")
        tests = staging / f"transformers-{version}" / "tests"
        # The sdist drops tests/__init__.py; test_configuration_common.py imports its own folder as a package.
        (tests / "__init__.py").touch()
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        tests.rename(root / "tests")
        (root / MARKER).write_text(f"transformers=={version} tests/ from the PyPI sdist {archive.name}\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def install_test_requirements() -> None:
    missing = [name for name in TEST_REQUIREMENTS if importlib.util.find_spec(name) is None]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)


def fetch(dest: Path | None = None, force: bool = False) -> Path:
    version = installed_version()
    root = source_root(dest, version)
    if force or not is_fetched(root):
        root.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="transformers-sdist-") as download:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
                 f"transformers=={version}", "-d", download],
                check=True,
            )  # fmt: skip
            archives = sorted(Path(download).glob("transformers-*.tar.gz"))
            if not archives:
                raise RuntimeError(f"pip download produced no transformers sdist in {download}")
            _extract_tests(archives[0], root, version)
    install_test_requirements()
    return root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=None, help=f"cache folder (default {DEFAULT_DEST})")
    parser.add_argument("--force", action="store_true", help="download again even if already fetched")
    args = parser.parse_args(argv)
    root = fetch(args.dest, args.force)
    print(f"transformers common tests ready in {root / 'tests'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
