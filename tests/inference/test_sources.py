from pathlib import Path

import pytest

from blipq.contract.errors import UnreadableInput
from blipq.inference.fetch import FetchPolicy
from blipq.inference.sources import expand_inputs, read_source


def test_folders_expand_to_sorted_image_files(tmp_path: Path) -> None:
    for name in ("b.JPG", "a.png", "notes.txt", "sub/c.webp"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    flat = expand_inputs([str(tmp_path)], recursive=False)
    assert flat == [str(tmp_path / "a.png"), str(tmp_path / "b.JPG")]
    deep = expand_inputs([str(tmp_path)], recursive=True)
    assert deep == [str(tmp_path / "a.png"), str(tmp_path / "b.JPG"), str(tmp_path / "sub/c.webp")]


def test_files_urls_and_missing_paths_are_kept_in_order(tmp_path: Path) -> None:
    given = [str(tmp_path / "notes.txt"), "http://127.0.0.1:9/x.jpg", str(tmp_path / "missing.jpg")]
    assert expand_inputs(given, recursive=False) == given


def test_reading_a_missing_file_or_a_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(UnreadableInput, match="no such file"):
        read_source(str(tmp_path / "nope.jpg"), fetch=FetchPolicy(timeout_s=1, max_bytes=10))
    with pytest.raises(UnreadableInput, match="is a directory"):
        read_source(str(tmp_path), fetch=FetchPolicy(timeout_s=1, max_bytes=10))
