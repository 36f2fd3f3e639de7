"""Fixtures for the data tests: one folder of good and bad media, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.badmedia import make_bad_media


@pytest.fixture(scope="session")
def bad_media(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str | None]]:
    """(folder, {file name: None if usable else the expected reason keyword}); see badmedia.py."""
    root = tmp_path_factory.mktemp("bad_media")
    return root, make_bad_media(root)
