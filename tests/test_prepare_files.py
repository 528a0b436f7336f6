"""`files:PATH`: local .txt / .jsonl / .parquet documents, split deterministically; bad files are one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer import shards
from trainer.prepare import PrepareError, load_encoding, main, prepare, synthetic


def stories(n, stream):
    return [t for t, _ in synthetic.generate(0, n, stream)]


def decoded_docs(root, split):
    enc = load_encoding(root)
    bos = shards.load_tokenizer_meta(root)["bos_id"]
    return [enc.decode(d[1:].tolist()) for d in shards.split_documents(np.asarray(shards.load_split(root, split)), bos)]


def quiet(*a, **k):
    return prepare(*a, log=lambda s: None, **k)


def test_txt_blocks_between_blank_lines_are_documents(tmp_path):
    docs = stories(40, "txt")
    (tmp_path / "a.txt").write_text("\n\n".join(docs[:20]) + "\n")
    (tmp_path / "b.txt").write_text("\n \n\n".join(docs[20:]) + "\n\n\n")
    m = quiet(f"files:{tmp_path}", tmp_path / "out", vocab_size=400, val_docs=5)
    assert m["splits"]["train"]["docs"] == 35 and m["splits"]["val"]["docs"] == 5
    assert decoded_docs(tmp_path / "out", "train") == docs[:35]
    assert decoded_docs(tmp_path / "out", "val") == docs[35:]
    assert m["bpb_floor"] is None and set(m["params"]["files"]) == {"a.txt", "b.txt"}


def test_jsonl_text_field_and_default_split_of_a_tenth(tmp_path):
    docs = stories(50, "jsonl")
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)) + "\n")
    m = quiet(f"files:{path}", tmp_path / "out", vocab_size=400)
    assert m["splits"]["val"]["docs"] == 5
    assert decoded_docs(tmp_path / "out", "val") == docs[45:]
    shards.verify(tmp_path / "out")


def test_parquet_text_column_in_a_directory_tree(tmp_path):
    docs = stories(60, "pq")
    (tmp_path / "sub").mkdir()
    pq.write_table(pa.table({"text": docs[:30], "n": list(range(30))}), tmp_path / "sub" / "p1.parquet")
    pq.write_table(pa.table({"text": docs[30:] + [None, "   "]}), tmp_path / "sub" / "p2.parquet")
    (tmp_path / "notes.md").write_text("ignored: not a supported suffix")
    m = quiet(f"files:{tmp_path}", tmp_path / "out", vocab_size=400, val_docs=10)
    assert m["splits"]["train"]["docs"] == 50  # the null and the blank row are skipped
    assert decoded_docs(tmp_path / "out", "val") == docs[50:]


def test_the_split_is_deterministic(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in stories(30, "det")))
    a = quiet(f"files:{path}", tmp_path / "a", vocab_size=300, val_docs=3)
    b = quiet(f"files:{path}", tmp_path / "b", vocab_size=300, val_docs=3)
    assert a["files"] == b["files"]


def bad(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("name, content, expect", [
    ("bad.jsonl", '{"text": "ok one"}\n{"text": "ok two"}\nnot json\n', "line 3 is not JSON"),
    ("notext.jsonl", '{"text": "ok"}\n{"body": "no text"}\n', "line 2 has no string \"text\""),
    ("latin1.txt", "caf\xe9 au lait\n\nsecond doc\n".encode("latin-1"), "not UTF-8"),
    ("corrupt.parquet", b"PAR1 this is not really parquet PAR1", "not a readable parquet file"),
    ("empty.txt", "\n\n   \n", "holds 0 non-empty document"),
    ("one.txt", "just one document", "holds 1 non-empty document"),
    ("data.csv", "text\nhello\n", "suffix '.csv'"),
])
def test_each_bad_file_is_a_one_line_error_naming_it(tmp_path, capsys, name, content, expect):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    err = bad([f"files:{path}", "--out", str(tmp_path / "out"), "--vocab-size", "300"], capsys)
    assert expect in err and name in err
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob("out.tmp-*"))


def test_a_parquet_file_without_a_text_column_is_named(tmp_path, capsys):
    pq.write_table(pa.table({"body": ["a", "b", "c"]}), tmp_path / "x.parquet")
    err = bad([f"files:{tmp_path / 'x.parquet'}", "--out", str(tmp_path / "out")], capsys)
    assert "no \"text\" column" in err and "body" in err


def test_missing_path_and_empty_directory(tmp_path, capsys):
    err = bad([f"files:{tmp_path / 'nope'}", "--out", str(tmp_path / "out")], capsys)
    assert "does not exist" in err and "nope" in err
    (tmp_path / "empty").mkdir()
    err = bad([f"files:{tmp_path / 'empty'}", "--out", str(tmp_path / "out")], capsys)
    assert "holds no" in err
    err = bad(["files:", "--out", str(tmp_path / "out")], capsys)
    assert "needs a path" in err


def test_val_docs_must_leave_training_documents(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("one\n\ntwo\n\nthree\n")
    err = bad([f"files:{tmp_path / 't.txt'}", "--out", str(tmp_path / "out"), "--val-docs", "3"], capsys)
    assert "--val-docs 3" in err and "1 to 2" in err
    with pytest.raises(PrepareError):
        quiet(f"files:{tmp_path / 't.txt'}", tmp_path / "out", val_docs=0)
