"""URL normalization and password masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import StorageError, mask_url, normalize_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///runs/a.db", "sqlite:///runs/a.db"),
        ("sqlite:////abs/a.db", "sqlite:////abs/a.db"),
        ("runs/a.db", "sqlite:///runs/a.db"),
        ("/abs/b.sqlite", "sqlite:////abs/b.sqlite"),
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgres://u:pw@h:5433/db", "postgresql+psycopg://u:pw@h:5433/db"),
        ("postgresql+psycopg://u@h/db?sslmode=require", "postgresql+psycopg://u@h/db?sslmode=require"),
        ("  postgresql://u:p%40ss@h/db ", "postgresql+psycopg://u:p%40ss@h/db"),
    ],
)
def test_normalize(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


def test_relative_sqlite_resolves_against_base_dir(tmp_path: Path) -> None:
    assert normalize_url("a.db", base_dir=tmp_path) == f"sqlite:///{tmp_path}/a.db"
    assert normalize_url("sqlite:///sub/a.db", base_dir=tmp_path) == f"sqlite:///{tmp_path}/sub/a.db"
    assert normalize_url("sqlite:////abs/a.db", base_dir=tmp_path) == "sqlite:////abs/a.db"


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u@h/db",
        "postgresql+psycopg2://u@h/db",
        "notes.txt",
        "",
        "sqlite://",
        "sqlite:///:memory:",
        "postgresql://u@h:port/db",
        "postgresql://u@h",
        "postgresql://u:s3cr@t@h/db",
    ],
)
def test_bad_urls_raise_storage_error(url: str) -> None:
    expected = r"^bad storage URL .*; use sqlite:///file\.db or postgresql://"
    with pytest.raises(StorageError, match=expected) as err:
        normalize_url(url)
    assert "s3cr" not in str(err.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg://u:s3cret@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
        ("postgresql://u:s3cr@t@h/db", "postgresql://u:***@h/db"),  # unescaped '@' in the password
        ("postgresql://u@h/db?password=s3cret&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
        ("sqlite:///a.db", "sqlite:///a.db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
    ],
)
def test_mask_url(url: str, expected: str) -> None:
    assert mask_url(url) == expected


@pytest.mark.parametrize(
    "garbage", ["", "::::", "x://u:s3cret@", "postgresql://u:s3cret@h:notaport/db", "\x00", "a@b:c@d"]
)
def test_mask_url_never_raises_nor_leaks(garbage: str) -> None:
    assert "s3cret" not in mask_url(garbage)
