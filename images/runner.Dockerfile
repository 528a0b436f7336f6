# The runner as a container (compose.yaml's `runner` service): trusted host-side code that drives the host's
# Docker engine through its socket. It is NOT a trial image and trial containers never run from it.
# Build context: the repository root; images/runner.Dockerfile.dockerignore (BuildKit: Docker 23+, compose v2)
# lets the runner's sources in, which the root .dockerignore (trial image) keeps out.
FROM python:3.11-slim
RUN apt-get update -q && apt-get install -y -q --no-install-recommends git && rm -rf /var/lib/apt/lists/*
# The CPU build of torch first (the runner never trains; it imports the evaluator's schema check), then the rest.
RUN pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml /src/pyproject.toml
COPY runner/ /src/runner/
COPY trainer/ /src/trainer/
RUN touch /src/README.md && pip install --no-cache-dir /src && rm -rf /src
# compose mounts the project at the same path as on the host and puts it first on PYTHONPATH, so the runner
# builds images from, and bind-mounts trial files at, host paths the engine understands.
ENTRYPOINT ["python", "-m", "runner.cli"]
CMD ["--help"]
