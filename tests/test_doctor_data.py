"""doctor's data check: valid data passes; synthetic data from an older grammar passes with a note saying how to
remake it (a stale cache after an upgrade would otherwise give numbers that match nothing in the docs)."""
from __future__ import annotations

import json

from runner.doctor import check_data
from trainer.prepare import prepare, synthetic
from trainer.shards import write_manifest


def test_data_of_this_grammar_passes_without_a_note(tmp_path):
    prepare("synthetic", tmp_path / "d", seed=1, train_docs=200, val_docs=10, log=lambda s: None)
    c = check_data(tmp_path / "d")
    assert c.ok and "files verified (synthetic, bpb floor" in c.detail and "note" not in c.detail


def test_synthetic_data_of_an_older_grammar_passes_with_a_note_naming_the_command_that_remakes_it(tmp_path):
    d = tmp_path / "d"
    prepare("synthetic", d, seed=1, train_docs=200, val_docs=10, log=lambda s: None)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["params"]["grammar"] = "stories/1"
    write_manifest(d, {k: v for k, v in manifest.items() if k != "files"})
    c = check_data(d)
    assert c.ok, c.detail
    assert f"made by grammar stories/1, this version makes {synthetic.GRAMMAR_VERSION}" in c.detail
    assert f"autoresearch prepare synthetic --out {d} --force" in c.detail


def test_a_corrupt_val_shard_fails_naming_the_file_and_the_command_that_remakes_the_data(tmp_path):
    d = tmp_path / "d"
    prepare("synthetic", d, seed=1, train_docs=200, val_docs=10, log=lambda s: None)
    shard = min((d / "val").iterdir())
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF                        # one byte flipped: same size, other content
    shard.write_bytes(bytes(data))
    c = check_data(d)
    assert not c.ok and str(shard) in c.detail and "does not match its sha256" in c.detail
    assert c.fix == f"remake it: `autoresearch prepare synthetic --out {d} --force` (with the options it was made with)"
