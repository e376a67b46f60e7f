"""The offline corpus readers, on tiny samples of each source format shipped in tests/data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from expert_router.corpora import NAMED_CORPORA, dictd, gcide, glossaries, pydocs, topics
from expert_router.corpora.fortunes import fortune_entries
from expert_router.corpora.text import clip
from expert_router.corpus import load_corpus
from expert_router.errors import UserError

DATA = Path(__file__).parent.parent / "data"
DICTD = DATA / "dictd"


@pytest.fixture
def samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reader pointed at the samples instead of the installed Debian packages."""
    monkeypatch.setenv("EXPERT_ROUTER_DICTD", str(DICTD))
    monkeypatch.setenv("EXPERT_ROUTER_FORTUNES", str(DATA / "fortunes"))
    monkeypatch.setenv("EXPERT_ROUTER_PYTHON_DOCS", str(DATA / "python-docs"))


def test_dictd_numbers_are_base64_most_significant_first():
    assert [dictd.decode_number(d) for d in ("A", "B", "BA", "Kj", "/")] == [0, 1, 64, 10 * 64 + 35, 63]


def test_dictd_entries_once_each_without_database_notes():
    entries = list(dictd.read_dictd(DICTD / "foldoc.index"))
    assert [sorted(e.headwords) for e in entries] == [["free store", "heap"], ["Acme Corp"]]
    gcide_words = [e.headwords[0] for e in dictd.read_dictd(DICTD / "gcide.index")]
    assert "00-database-short" not in gcide_words and gcide_words[0] == "Writ"


def test_a_missing_dictionary_names_its_debian_package(monkeypatch):
    monkeypatch.setenv("EXPERT_ROUTER_DICTD", str(DATA))
    with pytest.raises(UserError, match="apt-get install dict-gcide"):
        dictd.dictd_path("gcide", "dict-gcide")


def test_gcide_takes_tagged_entries_whole_and_tagged_senses_only():
    tagged = dict(gcide.read_gcide(DICTD / "gcide.index", ["Law", "Astron."]))
    texts = [t for _, t in gcide.read_gcide(DICTD / "gcide.index", ["Law"])]
    assert texts[0] == "Writ: A written order of a court commanding a person to do or not to do some act. See Summons."
    assert texts[1] == "Abate: To put an end to; as, to abate a nuisance."  # sense 2 only, citation dropped
    assert "(Law)" not in " ".join(texts) and "Webster" not in " ".join(texts)
    assert tagged["Astron."].startswith("Comet: A body of the solar system")


def test_gcide_accent_markup_keeps_the_letter():
    assert gcide.clean("rago[^u]t, caf[e'] and b[=a]t [Obs.]") == "ragout, cafe and bat"


def test_foldoc_subject_tag_links_urls_and_dates_removed():
    tag, text = next(glossaries.read_foldoc(DICTD / "foldoc.index"))
    assert tag == "programming"
    assert text == "heap: An area of memory from which a program allocates blocks at run time."


def test_jargon_pronunciation_part_of_speech_and_usage_tags_removed():
    assert list(glossaries.read_jargon(DICTD / "jargon.index")) == [
        "segfault: Short for segmentation fault: a program read memory it does not own, and the kernel stopped it."
    ]


def test_wordnet_senses_without_synonym_lists():
    texts = list(glossaries.read_wordnet(DICTD / "wn.index"))
    assert "gazpacho: a cold soup of tomatoes, peppers and cucumbers" in texts
    assert all("syn" not in t for t in texts)


def test_fortune_entries_split_on_percent_lines():
    entries = fortune_entries(DATA / "fortunes" / "startrek")
    assert len(entries) == 3 and entries[0].startswith("Captain's log") and "-- Kirk" in entries[0]


def test_python_docs_prose_only_with_roles_resolved(samples):
    paragraphs = [t for _, t in pydocs.read_python_docs(pydocs.python_docs_dir(), ("tutorial",))]
    assert paragraphs == [
        (
            "Lists are mutable sequences; use list.sort to sort one in place, or sorted to get a new list. "
            "See the sorting guide."
        ),
        "A second prose paragraph about key functions and dict objects.",
    ]


def test_pack_joins_short_texts_up_to_the_minimum():
    assert list(topics.pack(["ab", "cd", "efgh", "ij"], min_chars=6, max_chars=100)) == ["ab\ncd\nefgh"]
    assert list(topics.pack(["abcdefgh"], min_chars=4, max_chars=4)) == ["abcd"]


def test_clip_cuts_at_a_sentence_end():
    assert clip("First sentence. Second one here.", 24) == "First sentence."
    assert clip("short", 24) == "short"


def test_topics_are_balanced_labelled_with_sources_and_interleaved(samples):
    mix = {
        "startrek": (topics.fortunes("startrek"),),
        "food": (topics.gcide("Cookery"), topics.fortunes("food"), topics.wordnet("food", topics.FOOD_WORDS)),
        "astronomy": (topics.gcide("Astron."), topics.wordnet("astronomy", topics.SKY_WORDS)),
        "python": (topics.Source("python3-doc", topics.python_docs),),
    }
    docs = list(topics.read_topics(mix, per_topic=2, min_chars=20, max_chars=400))
    assert [d.label for d in docs[:4]] == ["startrek", "food", "astronomy", "python"]
    assert max(Counter(d.label for d in docs).values()) == 2
    sources = {d.source for d in docs}
    assert {"fortunes/startrek", "python3-doc"} <= sources and "wordnet (astronomy)" in sources
    assert not any("rock star" in d.text for d in docs)  # a gloss that only mentions the word


def test_demo_and_fortunes_are_named_corpora(samples):
    assert {"demo", "fortunes"} <= set(NAMED_CORPORA)
    with pytest.raises(UserError, match="missing"):
        load_corpus("fortunes")  # it reads the fortune files: the samples hold 4 of its 18 categories
