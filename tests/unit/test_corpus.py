import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from expert_router.corpus import CorpusOptions, load_corpus, read_corpus
from expert_router.errors import UserError


def test_jsonl_with_a_configurable_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"body": "first doc", "topic": "a"}\n\n{"body": "second doc", "topic": "b"}\n')
    docs = load_corpus(str(path), CorpusOptions(text_field="body", label_field="topic"))
    assert [(d.text, d.label) for d in docs] == [("first doc", "a"), ("second doc", "b")]


def test_gzipped_jsonl_streams_only_what_is_asked(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for i in range(1000):
            f.write(json.dumps({"text": f"document {i}"}) + "\n")
    docs = load_corpus(str(path), limit=3)
    assert [d.text for d in docs] == ["document 0", "document 1", "document 2"]


def test_jsonl_without_the_field_names_it(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"content": "x"}\n')
    with pytest.raises(UserError, match="text"):
        load_corpus(str(path))


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(UserError, match="2"):
        load_corpus(str(path))


def test_parquet(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["alpha doc", "beta doc"], "label": ["x", "y"]}), path)
    docs = load_corpus(str(path), CorpusOptions(label_field="label"))
    assert [(d.text, d.label) for d in docs] == [("alpha doc", "x"), ("beta doc", "y")]


def test_parquet_without_the_column(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["alpha"]}), path)
    with pytest.raises(UserError, match="text"):
        load_corpus(str(path))


def test_folder_of_text_files_labels_by_subfolder(tmp_path):
    (tmp_path / "space").mkdir()
    (tmp_path / "food").mkdir()
    (tmp_path / "space" / "a.txt").write_text("rockets and orbits")
    (tmp_path / "food" / "b.txt").write_text("bread and butter")
    docs = sorted(load_corpus(str(tmp_path)), key=lambda d: d.text)
    assert [(d.text, d.label) for d in docs] == [("bread and butter", "food"), ("rockets and orbits", "space")]


def test_missing_empty_and_binary_corpora_are_refused(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_corpus(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match="no documents"):
        load_corpus(str(tmp_path / "empty.jsonl"))
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02binary\xff\xfe" * 10)
    with pytest.raises(UserError, match="text"):
        load_corpus(str(tmp_path / "blob.txt"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError):
        load_corpus(str(tmp_path / "empty_dir"))


def test_hugging_face_dataset_from_a_local_folder(tmp_path, monkeypatch):
    """The same code path that streams allenai/c4 online, pointed at a local dataset folder."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "local_c4"
    folder.mkdir()
    with open(folder / "train.jsonl", "w") as f:
        for i in range(50):
            f.write(json.dumps({"text": f"web page number {i}", "url": f"http://x/{i}"}) + "\n")
    docs = list(read_corpus(f"hf:{folder}", limit=5))
    assert [d.text for d in docs] == [f"web page number {i}" for i in range(5)]


def test_a_missing_hugging_face_dataset_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot open Hugging Face dataset"):
        list(read_corpus("hf:no-such-owner/no-such-dataset", limit=1))


def test_demo_corpus_is_labelled_and_interleaved():
    docs = load_corpus("demo", limit=40)
    assert len({d.label for d in docs}) >= 8 and all(d.text for d in docs)


def test_a_byte_order_mark_and_a_damaged_gzip_file(tmp_path):
    """A JSONL file saved with a BOM was "line 1 is not JSON"; a gzip file damaged mid-stream a zlib traceback."""
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + b'{"text": "first"}\n{"text": "second"}\n')
    assert [d.text for d in read_corpus(str(bom))] == ["first", "second"]
    damaged = tmp_path / "damaged.jsonl.gz"
    data = bytearray(gzip.compress(b'{"text": "some words here"}\n' * 2000))
    data[10:18] = b"\xff" * 8  # the first deflate block's header: zlib.error, "invalid block type"
    damaged.write_bytes(bytes(data))
    with pytest.raises(UserError, match="not a readable gzip file"):
        list(read_corpus(str(damaged)))
