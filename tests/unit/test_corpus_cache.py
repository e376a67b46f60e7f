"""A named corpus is built once and read back while what it was built from is unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from expert_router.corpora import cache
from expert_router.corpora.document import Document

DOCUMENTS = [Document("first text", "law", "gcide (Law)"), Document("second\ntext", None, None)]


class Builder:
    """A corpus reader that counts its builds."""

    def __init__(self, documents: list[Document]):
        self.documents = documents
        self.builds = 0

    def __call__(self) -> list[Document]:
        self.builds += 1
        return list(self.documents)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "source.txt").write_text("source text")
    return folder


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EXPERT_ROUTER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_corpus_is_built_once_then_read_back_the_same(folder, data):
    build = Builder(DOCUMENTS)
    assert list(cache.through_cache("demo", build, lambda: [data])) == DOCUMENTS
    assert list(cache.through_cache("demo", build, lambda: [data])) == DOCUMENTS
    assert build.builds == 1
    assert len(list(folder.glob("demo-*.jsonl"))) == 1


def test_changed_data_builds_it_again_and_drops_the_old_copy(folder, data):
    build = Builder(DOCUMENTS)
    list(cache.through_cache("demo", build, lambda: [data]))
    source = data / "sub" / "source.txt"
    source.write_text("an upgraded package")  # another size
    list(cache.through_cache("demo", build, lambda: [data]))
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same size, newer
    list(cache.through_cache("demo", build, lambda: [data]))
    (data / "sub" / "new.txt").write_text("x")
    list(cache.through_cache("demo", build, lambda: [data]))
    assert build.builds == 4
    assert len(list(folder.glob("demo-*.jsonl"))) == 1
    assert list(cache.through_cache("other", Builder([]), lambda: [data])) == []  # another name, its own file
    assert len(list(folder.glob("*.jsonl"))) == 2


def test_a_damaged_cache_file_is_built_again(folder, data):
    build = Builder(DOCUMENTS)
    list(cache.through_cache("demo", build, lambda: [data]))
    (cached,) = folder.glob("demo-*.jsonl")
    cached.write_text(cached.read_text().splitlines()[0] + "\n")  # cut short: its header counts two
    assert list(cache.through_cache("demo", build, lambda: [data])) == DOCUMENTS
    cached.write_text("not json")
    assert list(cache.through_cache("demo", build, lambda: [data])) == DOCUMENTS
    assert build.builds == 3


def test_off_and_an_unwritable_folder_build_every_time(tmp_path, monkeypatch, data):
    build = Builder(DOCUMENTS)
    monkeypatch.setenv("EXPERT_ROUTER_CACHE_DIR", "off")
    assert list(cache.through_cache("demo", build, lambda: [data])) == DOCUMENTS
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("EXPERT_ROUTER_CACHE_DIR", str(blocked / "cache"))  # under a file: cannot be made
    assert list(cache.through_cache("demo", build, lambda: [data])) == DOCUMENTS
    assert list(cache.through_cache("demo", build, lambda: [data])) == DOCUMENTS
    assert build.builds == 3


def test_the_default_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("EXPERT_ROUTER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.cache_dir() == tmp_path / "expert-router"


def test_missing_data_is_the_readers_error_not_the_caches(folder):
    from expert_router.errors import UserError

    def missing() -> list[Path]:
        raise UserError("the dictionary 'gcide' is not installed")

    def build() -> list[Document]:
        raise UserError("the dictionary 'gcide' is not installed")

    with pytest.raises(UserError, match="not installed"):
        list(cache.through_cache("demo", build, missing))
    assert not folder.exists()
