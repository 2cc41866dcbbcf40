"""Output paths are checked before any work: one line naming the problem, never an internal error."""

import os

import pytest

from vidprune.errors import VidpruneError
from vidprune.paths import output_file, output_folder


def test_folder_that_exists_or_can_be_made(tmp_path):
    assert output_folder(tmp_path) == tmp_path
    assert output_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # checking creates nothing


def test_folder_that_is_a_file(tmp_path):
    f = tmp_path / "table.csv"
    f.write_text("x")
    with pytest.raises(VidpruneError, match="is a file, not a folder"):
        output_folder(f)
    with pytest.raises(VidpruneError, match="'.*table.csv' is a file"):
        output_folder(f / "sub")


def test_file_under_a_file_or_naming_a_folder(tmp_path):
    f = tmp_path / "hostname"
    f.write_text("x")
    with pytest.raises(VidpruneError, match="is a file, not a folder"):
        output_file(f / "report.html")
    with pytest.raises(VidpruneError, match="is a folder; pass a file name, e.g. --out .*report.html"):
        output_file(tmp_path)
    assert output_file(tmp_path / "new" / "report.html").name == "report.html"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(VidpruneError, match="not writable"):
            output_folder(locked / "results")
        with pytest.raises(VidpruneError, match="not writable"):
            output_file(locked / "report.html")
    finally:
        locked.chmod(0o700)
