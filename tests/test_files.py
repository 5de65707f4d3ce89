"""Folders and files that appear whole or not at all."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from dreamloom.files import sha256_file, staged_file, staged_folder


def _listing(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_a_staged_folder_appears_only_when_complete(tmp_path):
    target = tmp_path / "out"
    with staged_folder(target) as staging:
        (staging / "a.txt").write_text("a")
        assert not target.exists()  # nothing visible while it is written
        assert staging.parent == tmp_path and staging.name.startswith(".")
    assert (target / "a.txt").read_text() == "a"
    assert _listing(tmp_path) == ["out"]


def test_an_error_leaves_the_target_as_it_was_and_no_staging_behind(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), staged_folder(target, exists="replace") as staging:
        (staging / "new.txt").write_text("new")
        raise RuntimeError("disk full")
    assert _listing(target) == ["old.txt"]
    assert _listing(tmp_path) == ["out"]


def test_an_empty_target_folder_is_replaced(tmp_path):
    (tmp_path / "out").mkdir()
    with staged_folder(tmp_path / "out") as staging:
        (staging / "a.txt").write_text("a")
    assert _listing(tmp_path / "out") == ["a.txt"]


@pytest.mark.parametrize("exists", ["refuse", "replace", "keep"])
def test_a_non_empty_target_is_refused_replaced_or_kept(tmp_path, exists):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")

    def write() -> None:
        with staged_folder(target, exists=exists) as staging:
            (staging / "new.txt").write_text("new")

    if exists == "refuse":
        with pytest.raises(FileExistsError):
            write()
    else:
        write()
    expected = {"refuse": ["old.txt"], "replace": ["new.txt"], "keep": ["old.txt"]}[exists]
    assert _listing(target) == expected
    assert _listing(tmp_path) == ["out"]  # neither the staging nor the retired folder is left


def test_a_staged_file_replaces_its_target_whole_or_not_at_all(tmp_path):
    target = tmp_path / "image.png"
    target.write_bytes(b"old")
    with pytest.raises(ValueError), staged_file(target) as staging:
        staging.write_bytes(b"half")
        raise ValueError
    assert target.read_bytes() == b"old"
    with staged_file(target) as staging:
        staging.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert _listing(tmp_path) == ["image.png"]


def test_sha256_file_is_the_digest_of_the_bytes(tmp_path):
    data = bytes(range(256)) * 5000
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_what_is_published_has_the_permissions_a_plain_mkdir_would_give(tmp_path):
    """Staging folders are private (0700) while written; published, they follow the umask like any
    folder, so a server running as another user (Triton on the serving volume) can read them."""
    import os

    previous = os.umask(0o027)
    try:
        with staged_folder(tmp_path / "out") as staging:
            (staging / "a.txt").write_text("a")
        with staged_file(tmp_path / "file.png") as staging:
            staging.write_bytes(b"png")
    finally:
        os.umask(previous)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "file.png").stat().st_mode & 0o777 == 0o640
