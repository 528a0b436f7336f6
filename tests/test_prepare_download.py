"""Downloads over real HTTP on 127.0.0.1: resumed with Range after a dropped connection, retried, checksummed."""
from __future__ import annotations

import hashlib
import io
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer import shards
from trainer.prepare import PrepareError, main, prepare, synthetic
from trainer.prepare.download import fetch
from trainer.prepare.sources import DATASETS, check_parquet


class FileServer:
    """A threaded HTTP server for `files` that honours Range requests and misbehaves on request.

    drops[name] = n: the next n responses for name send half the body and close the connection.
    errors[name] = [codes]: the next responses for name are these HTTP errors.
    sha[name]: sent as X-Linked-Etag (as Hugging Face does); GET /redirect/NAME answers 302 -> /NAME.
    """

    def __init__(self, files: dict[str, bytes]):
        self.files, self.drops, self.errors, self.sha, self.always_drop = files, {}, {}, {}, set()
        self.requests: list[tuple[str, str | None]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                name, rng = self.path.lstrip("/"), self.headers.get("Range")
                owner.requests.append((name, rng))
                if name.startswith("redirect/"):
                    self.send_response(302)
                    self.send_header("Location", "/" + name[len("redirect/"):])
                    if name[len("redirect/"):] in owner.sha:
                        self.send_header("X-Linked-Etag", f'"{owner.sha[name[len("redirect/"):]]}"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if owner.errors.get(name):
                    self.send_error(owner.errors[name].pop(0))
                    return
                data = owner.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng:
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in owner.always_drop or owner.drops.get(name, 0) > 0:
                    owner.drops[name] = owner.drops.get(name, 1) - 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def parquet_bytes(texts) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buf, row_group_size=200)
    return buf.getvalue()


@pytest.fixture()
def server():
    s = FileServer({})
    yield s
    s.close()


@pytest.fixture(scope="module")
def shard_files():
    return {"train": parquet_bytes([t for t, _ in synthetic.generate(0, 1500, "dl-train")]),
            "train2": parquet_bytes([t for t, _ in synthetic.generate(0, 500, "dl-train2")]),
            "val": parquet_bytes([t for t, _ in synthetic.generate(0, 300, "dl-val")])}


def quiet(msg):
    pass


def test_a_dropped_connection_is_resumed_with_a_range_request(server, shard_files, tmp_path):
    data = shard_files["train"]
    server.files["f.parquet"] = data
    server.drops["f.parquet"] = 1
    digest = fetch(f"{server.url}/f.parquet", tmp_path / "f.parquet", retries=3, backoff=0.01, check=check_parquet,
                   log=quiet)
    assert (tmp_path / "f.parquet").read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()
    assert server.requests == [("f.parquet", None), ("f.parquet", f"bytes={len(data) // 2}-")]
    assert not (tmp_path / "f.parquet.part").exists()
    # a verified file in the cache is reused without any traffic
    fetch(f"{server.url}/f.parquet", tmp_path / "f.parquet", digest, log=quiet)
    assert len(server.requests) == 2


def test_server_errors_are_retried_and_not_found_is_not(server, shard_files, tmp_path):
    server.files["f.parquet"] = shard_files["val"]
    server.errors["f.parquet"] = [503, 429]
    fetch(f"{server.url}/f.parquet", tmp_path / "f.parquet", retries=2, backoff=0.01, log=quiet)
    assert [r[0] for r in server.requests] == ["f.parquet"] * 3
    with pytest.raises(PrepareError, match="HTTP 404") as e:
        fetch(f"{server.url}/missing.parquet", tmp_path / "m.parquet", retries=5, backoff=0.01, log=quiet)
    assert "\n" not in str(e.value)
    assert server.requests[-1] == ("missing.parquet", None) and len(server.requests) == 4


def test_a_checksum_mismatch_fails_and_keeps_nothing(server, shard_files, tmp_path):
    server.files["f.parquet"] = shard_files["val"]
    with pytest.raises(PrepareError, match="does not match the expected"):
        fetch(f"{server.url}/f.parquet", tmp_path / "f.parquet", "0" * 64, retries=1, backoff=0.01, log=quiet)
    assert not (tmp_path / "f.parquet").exists() and not (tmp_path / "f.parquet.part").exists()


def test_the_server_sha256_is_checked_also_when_it_comes_on_a_redirect(server, shard_files, tmp_path):
    data = shard_files["val"]
    server.files["f.parquet"] = data
    server.sha["f.parquet"] = "f" * 64
    with pytest.raises(PrepareError, match="does not match the expected ffffffffffff"):
        fetch(f"{server.url}/redirect/f.parquet", tmp_path / "f.parquet", retries=0, log=quiet)
    server.sha["f.parquet"] = hashlib.sha256(data).hexdigest()
    fetch(f"{server.url}/redirect/f.parquet", tmp_path / "f.parquet", retries=0, log=quiet)
    assert (tmp_path / "f.parquet").read_bytes() == data


def test_a_file_that_is_not_parquet_is_never_kept(server, tmp_path):
    server.files["f.parquet"] = b"<html>rate limited</html>"
    with pytest.raises(PrepareError, match="not usable") as e:
        fetch(f"{server.url}/f.parquet", tmp_path / "f.parquet", retries=0, check=check_parquet, log=quiet)
    assert "\n" not in str(e.value)
    assert not list(tmp_path.iterdir())


def test_prepare_climbmix_from_a_local_mirror_with_a_dropped_connection(server, shard_files, tmp_path):
    server.files.update({"shard_00000.parquet": shard_files["train"], "shard_06542.parquet": shard_files["val"]})
    server.drops["shard_00000.parquet"] = 1
    logs = []
    m = prepare("climbmix", tmp_path / "data", base_url=server.url, cache_dir=tmp_path / "cache", vocab_size=512,
                backoff=0.01, val_docs=200, log=logs.append)
    assert m["source"] == "climbmix" and m["bpb_floor"] is None
    assert m["splits"]["train"]["docs"] == 1500 and m["splits"]["val"]["docs"] == 200
    assert m["params"]["files"]["shard_00000.parquet"] == hashlib.sha256(shard_files["train"]).hexdigest()
    assert ("shard_00000.parquet", f"bytes={len(shard_files['train']) // 2}-") in server.requests
    assert any("resuming" in line for line in logs)
    shards.verify(tmp_path / "data")
    # a second prepare uses the cache: no traffic at all
    n = len(server.requests)
    prepare("climbmix", tmp_path / "again", base_url=server.url, cache_dir=tmp_path / "cache", vocab_size=512,
            val_docs=200, log=quiet)
    assert len(server.requests) == n


def test_tinystories_takes_its_base_url_from_the_environment(server, shard_files, tmp_path, monkeypatch):
    ds = DATASETS["tinystories"]
    train = ds.train_files(2)
    server.files.update({train[0]: shard_files["train"], train[1]: shard_files["train2"],
                         ds.val_file: shard_files["val"]})
    monkeypatch.setenv("AUTORESEARCH_DATA_URL", server.url + "/")
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    m = prepare("tinystories", tmp_path / "data", shards=2, train_docs=1800, vocab_size=400, log=quiet)
    assert m["splits"]["train"]["docs"] == 1800 and m["splits"]["val"]["docs"] == 300
    assert m["params"]["checksums_pinned"] is False
    assert (tmp_path / "cache" / "downloads" / "tinystories" / ds.val_file).is_file()


def test_a_download_failing_after_its_retries_is_one_line_installs_nothing_and_resumes_next_time(
        server, shard_files, tmp_path, capsys):
    server.files.update({"shard_00000.parquet": shard_files["train"], "shard_06542.parquet": shard_files["val"]})
    server.always_drop.add("shard_00000.parquet")
    argv = ["climbmix", "--out", str(tmp_path / "data"), "--base-url", server.url, "--cache-dir",
            str(tmp_path / "cache"), "--retries", "2", "--backoff", "0.01", "--vocab-size", "400"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "failed after 3 attempts" in err and "shard_00000.parquet" in err, err
    assert not (tmp_path / "data").exists() and not list(tmp_path.glob("data.tmp-*"))
    part = tmp_path / "cache" / "downloads" / "climbmix" / "shard_00000.parquet.part"
    assert 0 < part.stat().st_size < len(shard_files["train"])
    # the network is back: the same command resumes the partial file and finishes
    server.always_drop.clear()
    have = part.stat().st_size
    n = len(server.requests)
    assert main(argv) == 0
    assert server.requests[n] == ("shard_00000.parquet", f"bytes={have}-")
    shards.verify(tmp_path / "data")


def test_bad_download_options_are_one_line_errors(tmp_path, capsys):
    for argv, expect in ((["climbmix", "--shards", "0"], "--shards 0"),
                         (["tinystories", "--shards", "5"], "1 to 4"),
                         (["climbmix", "--base-url", "ftp://x"], "must start with http")):
        assert main(argv + ["--out", str(tmp_path / "d"), "--cache-dir", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err
        assert expect in err and err.count("\n") == 1, err


def test_a_downloaded_split_without_any_text_is_an_empty_corpus_error(server, shard_files, tmp_path, capsys):
    server.files.update({"shard_00000.parquet": shard_files["train"],
                         "shard_06542.parquet": parquet_bytes(["", "   ", None])})
    argv = ["climbmix", "--out", str(tmp_path / "data"), "--base-url", server.url, "--cache-dir",
            str(tmp_path / "cache"), "--vocab-size", "300"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no val documents (empty corpus)" in err and err.count("\n") == 1, err
    assert not (tmp_path / "data").exists() and not list(tmp_path.glob("data.tmp-*"))
