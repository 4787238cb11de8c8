"""STORE_URL picks the store; STORE_PATH, its older name, still works; bad values fail fast
naming the variable."""

from __future__ import annotations

import pytest

from shared.config import Common, ConfigError, Env, describe
from shared.store import sqlite_path


def common(**env: str) -> Common:
    return Common.from_env(Env(env))


def test_the_default_is_the_embedded_sqlite_file() -> None:
    assert common().store_url.get() == "./data/sluice.db"
    assert sqlite_path(common().store_url.get()) == "./data/sluice.db"


def test_store_path_is_an_alias_of_store_url() -> None:
    assert common(STORE_PATH="/data/s.db").store_url.get() == "/data/s.db"
    assert common(STORE_PATH="/data/s.db", STORE_URL="/data/s.db").store_url.get() == "/data/s.db"
    with pytest.raises(ConfigError, match="STORE_URL and STORE_PATH"):
        common(STORE_PATH="/data/a.db", STORE_URL="/data/b.db")


@pytest.mark.parametrize(("url", "path"), [
    ("sqlite:///data/s.db", "data/s.db"), ("sqlite:////data/s.db", "/data/s.db"),
    ("relative/s.db", "relative/s.db"), ("postgresql://u:p@db:5432/sluice", None),
    ("postgres://db/sluice?sslmode=verify-full&sslrootcert=/ca.pem", None)])
def test_urls_name_a_backend(url: str, path: str | None) -> None:
    assert sqlite_path(common(STORE_URL=url).store_url.get()) == path


@pytest.mark.parametrize("url", ["mysql://db/x", "sqlite:///", "postgresql://"])
def test_bad_store_urls_fail_naming_the_variable(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^STORE_URL: "):
        common(STORE_URL=url)


def test_the_store_password_is_never_described() -> None:
    shown = describe(common(STORE_URL="postgresql://sluice:s3cret@db/sluice"))
    assert "s3cret" not in str(shown) and "sluice:***@db" in shown["store_url"]


def test_pool_size_is_bounded() -> None:
    assert common().store_pool_size == 10
    with pytest.raises(ConfigError, match=r"^STORE_POOL_SIZE: "):
        common(STORE_POOL_SIZE="0")
