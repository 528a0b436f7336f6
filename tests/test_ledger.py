"""The ledger: one fsynced JSON line per trial, append-only, torn tails cut, results.tsv always in agreement."""
import json
import os

import pytest

from runner.errors import UserError
from runner.ledger import TSV_HEADER, Ledger, TrialRecord


def rec(n, status="discard", bpb=1.0, **kw):
    return TrialRecord(trial=n, kind="candidate", status=status, description=f"change {n}", commit=f"{n:040x}",
                       val_bpb=bpb, **kw)


def test_records_round_trip_one_line_each(tmp_path):
    led = Ledger(tmp_path)
    led.append(rec(0, "keep", 1.5, peak_memory_mb=2048.0, llm_usage={"total_tokens": 12}))
    led.append(rec(1, "crash", None, log_tail="Traceback ...\nValueError"))
    lines = (tmp_path / "trials.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["status"] == "crash"
    back = led.records()
    assert back[0].val_bpb == 1.5 and back[0].llm_usage == {"total_tokens": 12}
    assert back[1].log_tail.endswith("ValueError") and back[1].val_bpb is None


def test_append_fsyncs_every_line(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    led = Ledger(tmp_path)
    led.append(rec(0))
    led.append(rec(1))
    assert len(synced) >= 2  # one per line (plus the directory and results.tsv)
    monkeypatch.undo()


def test_appending_never_rewrites_earlier_lines(tmp_path):
    led = Ledger(tmp_path)
    led.append(rec(0))
    before = (tmp_path / "trials.jsonl").read_bytes()
    led.append(rec(1))
    assert (tmp_path / "trials.jsonl").read_bytes().startswith(before)


def test_a_torn_last_line_is_not_a_record_and_is_cut_before_the_next_append(tmp_path):
    led = Ledger(tmp_path)
    led.append(rec(0))
    with open(tmp_path / "trials.jsonl", "ab") as f:
        f.write(b'{"trial": 1, "kind": "cand')
    assert [r.trial for r in led.records()] == [0]
    led.append(rec(2))
    assert [r.trial for r in led.records()] == [0, 2]
    assert all(json.loads(line) for line in (tmp_path / "trials.jsonl").read_text().splitlines())


def test_a_corrupt_line_in_the_middle_is_a_one_line_error(tmp_path):
    led = Ledger(tmp_path)
    led.append(rec(0))
    with open(tmp_path / "trials.jsonl", "ab") as f:
        f.write(b"not json\n")
    led_lines = (tmp_path / "trials.jsonl").read_text()
    (tmp_path / "trials.jsonl").write_text(led_lines + json.dumps({"schema": "autoresearch.trial/1",
                                                                   "trial": 2, "kind": "candidate",
                                                                   "status": "keep", "description": "x"}) + "\n")
    with pytest.raises(UserError, match="line 2 is not a trial record"):
        led.records()


def test_an_unknown_status_is_refused(tmp_path):
    with pytest.raises(ValueError):
        Ledger(tmp_path).append(rec(0, "great"))


def test_non_finite_numbers_are_stored_as_null(tmp_path):
    led = Ledger(tmp_path)
    led.append(rec(0, "discard", float("nan")))
    assert led.records()[0].val_bpb is None


def test_results_tsv_has_autoresearchs_columns_and_follows_the_ledger(tmp_path):
    led = Ledger(tmp_path)
    led.append(rec(0, "keep", 1.234567891, peak_memory_mb=3072.0))
    led.append(TrialRecord(trial=1, kind="candidate", status="rejected", description="touch\t.git\nconfig"))
    led.append(rec(2, "crash", None))
    rows = (tmp_path / "results.tsv").read_text()
    assert rows.startswith(TSV_HEADER) and TSV_HEADER == "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
    lines = rows.splitlines()[1:]
    assert lines[0] == f"{0:07x}\t1.234568\t3.0\tkeep\tchange 0"
    assert lines[1] == "-\t0.000000\t0.0\trejected\ttouch .git config"
    assert lines[2].split("\t")[3] == "crash" and len(lines) == 3
