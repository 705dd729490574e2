"""Atomic writes: a writer killed or failing mid-way leaves the previous file/folder intact and no half file."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mplug_hf.io_utils import atomic_directory, atomic_open, atomic_write_json, atomic_write_text


def _no_temporaries(folder):
    return [name for name in os.listdir(folder) if name.endswith(".tmp") or name.endswith(".old")] == []


def test_atomic_write_text_replaces_the_file(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert _no_temporaries(tmp_path)


def test_an_exception_while_writing_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_json(path, {"version": 1})
    with pytest.raises(RuntimeError, match="injected"):
        with atomic_open(path) as handle:
            handle.write('{"version": 2, "half')
            raise RuntimeError("injected")
    assert json.loads(path.read_text()) == {"version": 1}
    assert _no_temporaries(tmp_path)
    # a value that cannot be serialised writes nothing at all
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"version": 1}


def test_atomic_open_refuses_append_mode(tmp_path):
    with pytest.raises(ValueError, match="not supported"):
        with atomic_open(tmp_path / "x", "a"):
            pass


WRITER = """
import sys, time
from mplug_hf.io_utils import atomic_open, atomic_directory
target, kind = sys.argv[1], sys.argv[2]
if kind == "file":
    with atomic_open(target) as handle:
        handle.write("new partial content ")
        handle.flush()
        print("writing", flush=True)
        time.sleep(60)
        handle.write("rest")
else:
    with atomic_directory(target, overwrite=True) as folder:
        (folder / "weights.bin").write_text("new partial")
        print("writing", flush=True)
        time.sleep(60)
"""


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_killed_writer_leaves_the_old_content(tmp_path, kind):
    target = tmp_path / ("result.json" if kind == "file" else "model")
    if kind == "file":
        target.write_text("old")
    else:
        target.mkdir()
        (target / "weights.bin").write_text("old")
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(target), kind], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "writing"
        time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    if kind == "file":
        assert target.read_text() == "old"
    else:
        assert sorted(os.listdir(target)) == ["weights.bin"]
        assert (target / "weights.bin").read_text() == "old"


def test_atomic_directory_moves_into_place_only_on_success(tmp_path):
    target = tmp_path / "converted"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as folder:
            (folder / "config.json").write_text("{}")
            raise RuntimeError("verification failed")
    assert not target.exists()
    assert os.listdir(tmp_path) == []
    with atomic_directory(target) as folder:
        (folder / "config.json").write_text("{}")
    assert os.listdir(target) == ["config.json"]
    # an existing folder is refused unless overwrite=True, before anything is written
    with pytest.raises(FileExistsError, match="overwrite"):
        with atomic_directory(target):
            raise AssertionError("not reached")
    with pytest.raises(RuntimeError):
        with atomic_directory(target, overwrite=True) as folder:
            (folder / "other.json").write_text("{}")
            raise RuntimeError("failed")
    assert os.listdir(target) == ["config.json"]
    with atomic_directory(target, overwrite=True) as folder:
        (folder / "other.json").write_text("{}")
    assert os.listdir(target) == ["other.json"]
    assert sorted(os.listdir(tmp_path)) == ["converted"]


def test_model_cards_are_written_atomically(tmp_path, monkeypatch):
    import model_cards.render as render

    written = render.render_all(cards_dir=str(tmp_path))
    before = {path: open(path).read() for path in written}
    calls = []
    original = render.render_model_card

    def failing(task, size, repo_id):
        calls.append(repo_id)
        if len(calls) == 3:
            raise RuntimeError("injected")
        return original(task, size, repo_id + "-new")

    monkeypatch.setattr(render, "render_model_card", failing)
    with pytest.raises(RuntimeError, match="injected"):
        render.render_all(cards_dir=str(tmp_path))
    after = {path: open(path).read() for path in written}
    assert sum(after[path] != before[path] for path in written) == 2  # two new cards, the others as they were
    for path in written:
        assert after[path].startswith("---")  # whole cards only
        assert _no_temporaries(os.path.dirname(path))


def test_evaluation_results_keep_the_previous_file_when_writing_fails(tmp_path):
    from mplug_hf.evaluation.runner import write_json

    path = write_json(tmp_path / "metrics.json", {"accuracy": 50.0})
    with pytest.raises(TypeError):
        write_json(path, {"accuracy": object()})
    assert json.loads(path.read_text()) == {"accuracy": 50.0}
    assert _no_temporaries(tmp_path)


def test_damaged_jsonl_lines_are_named_by_file_and_line(tmp_path):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from mplug_hf.evaluation.runner import load_records

    lines = [json.dumps({"image": f"{i}.png", "question": f"question {i}?", "answers": ["yes"] * 3}) for i in range(5)]

    @settings(max_examples=60, deadline=None)
    @given(st.integers(0, 4), st.integers(0, 200), st.sampled_from(["", "}", "{", '"', "\\x00", "[1]", "null"]))
    def check(line_index, cut, junk):
        damaged = list(lines)
        damaged[line_index] = damaged[line_index][: cut % len(damaged[line_index])] + junk
        path = tmp_path / "data.jsonl"
        path.write_text("\n".join(damaged) + "\n")
        try:
            records = load_records(str(path))
        except ValueError as error:
            assert f"data.jsonl:{line_index + 1}:" in str(error)
        else:  # the damage left a valid record (e.g. cut at 0 + "null" is refused, "" is a skipped empty line)
            assert all(isinstance(record, dict) for record in records)

    check()
