"""The README's main command, `bash scripts/demo.sh`, run the way the README says (with its `POLICY=` knob for a
run of seconds per trial): it sets up, runs the baseline and a trial, and writes the report and the branch."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.docker
def test_the_main_command_takes_a_policy_path_relative_to_where_it_is_started(tmp_path, sandbox_data, trial_image):
    exp = tmp_path / "experiment"
    env = {**os.environ, "POLICY": "policies/tiny.yaml", "TRIALS": "1", "EXPERIMENT": str(exp),
           "AUTORESEARCH_DATA": str(sandbox_data)}
    p = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]

    runs = sorted((exp / "runs").glob("demo-*"))
    assert len(runs) == 1, runs
    run = runs[0]
    assert (run / "report.md").is_file() and (run / "progress.png").stat().st_size > 0
    rows = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["baseline", "candidate"]
    assert rows[0]["policy_sha256"] == rows[1]["policy_sha256"]
    branch = subprocess.run(["git", "-C", str(exp), "branch", "--list", f"autoresearch/{run.name}"],
                            capture_output=True, text=True).stdout
    assert branch.strip().endswith(f"autoresearch/{run.name}")
    policy = json.loads((run / "run.json").read_text())["policy"]
    assert policy["preset"] == "tiny" and policy["train"]["budget_seconds"] == 8   # the policy it was given
