"""The `autoresearch` command: user errors are one line with exit 1 and no traceback, usage errors exit 2;
init makes a working experiment; status, report and doctor read what a run left."""
import os
import subprocess
from pathlib import Path

import pytest

import trainer
from runner.cli import main
from runner.ledger import Ledger
from runner.loop import Loop
from runner.runs import RunConfig
from runner.policy import Policy
from runner.workspace import init_repo
from trainer.shards import atomic_write_json

from tests.loop_fakes import TRAIN, FakeExecutor, Scripted, crash, set_score, with_usage


def cli(*args, cwd=None):
    """The installed entry point, as a user runs it."""
    env = {**os.environ, "AUTORESEARCH_DATA": "/nonexistent-data"}
    return subprocess.run(["autoresearch", *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=120)


def assert_one_line_error(p, *needles):
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autoresearch: error: "), p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def exp(tmp_path):
    repo = tmp_path / "exp"
    init_repo(repo, {"train.py": TRAIN, "program.md": "p\n", ".gitignore": "runs/\n"})
    data = tmp_path / "data"
    atomic_write_json(data / "manifest.json", {"schema": "autoresearch.data/1", "files": {}})
    return repo, data


@pytest.fixture
def finished_run(exp):
    repo, data = exp
    cfg = RunConfig(repo=repo, tag="t", data_dir=data, policy=Policy(), max_trials=3, image="img:test")
    Loop(cfg, executor=FakeExecutor(), proposer=Scripted(set_score(0.9), crash, set_score(0.95))).run()
    return repo


def test_run_outside_a_repository_is_one_line(tmp_path):
    assert_one_line_error(cli("run", "--repo", tmp_path, "--max-trials", "1"), "is not a git repository",
                          "autoresearch init")


def test_run_without_prepared_data_is_one_line(exp):
    repo, _ = exp
    assert_one_line_error(cli("run", "--repo", repo, "--data", repo / "nodata"), "no manifest.json",
                          "autoresearch prepare synthetic")


def test_a_bad_policy_is_one_line(exp, tmp_path):
    repo, data = exp
    bad = tmp_path / "p.yaml"
    bad.write_text("decision:\n  min_delta: -1\n")
    assert_one_line_error(cli("run", "--repo", repo, "--data", data, "--policy", bad), "decision.min_delta")
    bad.write_text("trian: {}\n")
    assert_one_line_error(cli("run", "--repo", repo, "--data", data, "--policy", bad), "unknown key 'trian'")


def test_resume_without_a_run_is_one_line(exp):
    repo, _ = exp
    assert_one_line_error(cli("run", "--repo", repo, "--resume"), "no runs in")
    assert_one_line_error(cli("run", "--repo", repo, "--resume", "--tag", "x"), "no run x to resume")


def test_an_existing_tag_without_resume_is_one_line(finished_run):
    assert_one_line_error(cli("run", "--repo", finished_run, "--tag", "t"), "run t exists", "--resume")


def test_reproducing_a_rejected_or_unknown_trial_is_one_line(finished_run):
    assert_one_line_error(cli("reproduce", "99", "--repo", finished_run), "has no trial 99")


def test_usage_errors_exit_2(tmp_path):
    assert cli("frobnicate").returncode == 2
    assert cli("run", "--max-trials", "many").returncode == 2
    assert cli().returncode == 2


def test_negative_max_trials_is_one_line(exp):
    repo, data = exp
    assert_one_line_error(cli("run", "--repo", repo, "--data", data, "--max-trials", "-1"), "--max-trials")


def test_a_cost_cap_without_prices_is_one_line_and_creates_nothing(exp):
    repo, data = exp
    p = cli("run", "--repo", repo, "--data", data, "--image", "img:test", "--max-cost", "5")
    assert_one_line_error(p, "--max-cost 5 needs prices", "no proposer.prices", "input_per_million")
    assert not (repo / "runs").exists()
    assert subprocess.run(["git", "-C", str(repo), "branch", "--list", "autoresearch/*"], capture_output=True,
                          text=True).stdout == ""
    for flag, value in (("--max-tokens", "0"), ("--max-cost", "-1"), ("--max-cost", "nan")):
        assert_one_line_error(cli("run", "--repo", repo, "--data", data, flag, value), flag)
    assert not (repo / "runs").exists()


def test_the_run_summary_says_down_from_the_baseline_and_counts_candidates_only(exp, tmp_path, monkeypatch,
                                                                                  capsys):
    repo, data = exp
    policy = tmp_path / "priced.yaml"
    policy.write_text("proposer:\n  ahead: 0\n  prices: {input_per_million: 1.0, output_per_million: 2.0}\n")
    proposer = Scripted(with_usage(set_score(0.9), 1000, 100), with_usage(crash, 2000, 100))
    monkeypatch.setattr("runner.loop.make_executor", lambda *a: FakeExecutor())
    monkeypatch.setattr("runner.loop.make", lambda kind, policy: proposer)
    assert main(["run", "--repo", str(repo), "--data", str(data), "--tag", "t", "--image", "img:test", "--plain",
                 "--policy", str(policy), "--max-trials", "2"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("run t: ")][-1]
    assert line.startswith("run t: max_trials 2 reached; best val_bpb 0.900000 (val_bpb down 10.00% from baseline "
                           "1.000000) at ")
    assert line.endswith("; kept 1 of 2 candidates (crash 1); LLM: 2 calls, 3,000 tokens (2,800 in / 200 out), "
                         "$0.0032")
    assert main(["status", "--repo", str(repo), "--tag", "t"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("(val_bpb down 10.00% from baseline 1.000000); kept 1 of 2 candidates (crash 1)")
    assert out[1] == "  LLM: 2 calls, 3,000 tokens (2,800 in / 200 out), $0.0032"


def test_status_shows_a_runs_token_cap_and_what_was_used_of_it(exp, capsys):
    repo, data = exp
    cfg = RunConfig(repo=repo, tag="t", data_dir=data, policy=Policy(), image="img:test", max_tokens=1500)
    proposer = Scripted(*(with_usage(set_score(1.0 - k / 100), 1000) for k in range(1, 4)))
    assert Loop(cfg, executor=FakeExecutor(), proposer=proposer).run().stopped == \
        "--max-tokens 1500 reached (2000 used)"
    assert main(["status", "--repo", str(repo), "--tag", "t"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == \
        "  LLM: 2 calls, 2,000 tokens (1,980 in / 20 out); caps --max-tokens 1500 (2,000 used)"


def test_init_copies_the_default_train_py_and_program_md(tmp_path):
    p = cli("init", tmp_path / "new")
    assert p.returncode == 0, p.stderr
    new = tmp_path / "new"
    assert (new / "train.py").read_text() == (Path(trainer.__file__).parent / "train.py").read_text()
    assert "val_bpb" in (new / "program.md").read_text() and (new / ".gitignore").read_text() == "runs/\n"
    log = subprocess.run(["git", "-C", str(new), "log", "--format=%s"], capture_output=True, text=True).stdout
    assert log.strip() == "autoresearch init: train.py and program.md"
    assert_one_line_error(cli("init", new), "not an empty directory")


def test_status_lists_runs_and_shows_one(finished_run, capsys):
    assert main(["status", "--repo", str(finished_run)]) == 0
    assert capsys.readouterr().out.split()[:5] == ["t", "trials", "4", "best", "0.900000"]
    assert main(["status", "--repo", str(finished_run), "--tag", "t"]) == 0
    out = capsys.readouterr().out
    assert "best 0.900000" in out and "baseline 1.000000" in out
    # the counts, read as a person would: the baseline is not a kept candidate
    assert out.splitlines()[0].endswith("(val_bpb down 10.00% from baseline 1.000000); kept 1 of 3 candidates "
                                        "(discard 1, crash 1)")


def test_status_report_and_reproduce_of_an_unknown_run_are_one_line(finished_run):
    for command in (["status"], ["report"], ["reproduce", "1"]):
        assert_one_line_error(cli(*command, "--repo", finished_run, "--tag", "nope"), "no run nope in",
                              "`autoresearch status` lists the runs")


def test_report_writes_png_and_md_for_the_latest_run(finished_run, capsys):
    assert main(["report", "--repo", str(finished_run)]) == 0
    run_dir = finished_run / "runs" / "t"
    assert (run_dir / "progress.png").stat().st_size > 1000
    assert "improvement: val_bpb down 10.00%" in (run_dir / "report.md").read_text()
    assert len(Ledger(run_dir).records()) == 4


def test_doctor_names_each_failure_with_a_fix(tmp_path, llm_server):
    policy = tmp_path / "p.yaml"
    policy.write_text(f"proposer:\n  kind: openai\n  base_url: {llm_server.base_url}\n  model: test-model\n"
                      "  api_key_env: AUTORESEARCH_TEST_NO_SUCH_KEY\n")
    p = cli("doctor", "--repo", tmp_path, "--data", tmp_path / "nodata", "--policy", policy)
    assert p.returncode == 1
    lines = p.stdout.splitlines()
    repo_line = next(i for i, line in enumerate(lines) if line.startswith("FAIL repo"))
    assert lines[repo_line + 1].strip().startswith("fix: create one with `autoresearch init")
    data_line = next(line for line in lines if line.startswith("FAIL data"))
    assert "autoresearch prepare synthetic" in data_line
    assert any(line.startswith("ok   endpoint") for line in lines), p.stdout
    assert "Traceback" not in p.stderr


def test_doctor_reports_an_endpoint_that_does_not_answer(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text("proposer:\n  kind: openai\n  base_url: http://127.0.0.1:9/v1\n")
    p = cli("doctor", "--repo", tmp_path, "--policy", policy)
    line = next(line for line in p.stdout.splitlines() if "endpoint" in line)
    assert line.startswith("FAIL endpoint") and "did not answer" in line


def test_prepare_hands_every_argument_to_trainer_prepare(tmp_path):
    p = cli("prepare", "--help")
    assert p.returncode == 0 and "usage: autoresearch prepare" in p.stdout and "--out" in p.stdout
    p = cli("prepare", "synthetic", "--out", tmp_path / "d", "--train-docs", 200, "--val-docs", 20,
            "--vocab-size", 300)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "d" / "manifest.json").is_file()
