# The trial image: Python, torch, numpy, pyyaml and the TRUSTED trainer code (harness, evaluator, probes, data
# format, presets). It never contains trainer/train.py (the untrusted candidate is mounted read-only per trial)
# nor trainer/prepare (host-side data preparation). Runs as a non-root user; the CPU flavour has no compiler.
#
#   FLAVOUR=cpu|cuda    picks images/requirements-$FLAVOUR.txt (the CUDA torch build for NVIDIA hosts)
#   BASE_IMAGE          python:3.11-slim for real users; air-gapped and CI builds use a local base made by
#                       images/build-base.sh (debootstrap + docker import), see docs/images.md
#
# Python packages come from images/wheelhouse-$FLAVOUR/ with --no-index when it holds wheels
# (images/build-wheelhouse.sh fills it with `pip download`), else from the package index.
# Build with `autoresearch build [--flavour cuda]` (tags the image by a content hash), or `docker compose build`.
ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- deps: a virtualenv with the pinned packages
FROM ${BASE_IMAGE} AS deps
ARG FLAVOUR=cpu
COPY images/ /build/images/
RUN set -eu; \
    req="/build/images/requirements-${FLAVOUR}.txt"; \
    wheels="/build/images/wheelhouse-${FLAVOUR}"; \
    test -f "$req" || { echo "no $req: FLAVOUR must be cpu or cuda" >&2; exit 1; }; \
    python3 -m venv /opt/venv; \
    if ls "$wheels"/*.whl >/dev/null 2>&1; then \
      echo "installing from the wheelhouse $wheels (no index)"; \
      /opt/venv/bin/pip install --no-cache-dir --no-index --find-links "$wheels" -r "$req"; \
    else \
      echo "no wheelhouse: installing from the package index"; \
      /opt/venv/bin/pip install --no-cache-dir -r "$req"; \
    fi; \
    /opt/venv/bin/pip uninstall -y -q pip; \
    rm -rf /build

# ---------------------------------------------------------------- the trial image
FROM ${BASE_IMAGE}
ARG FLAVOUR=cpu
# The CUDA flavour needs a C compiler at run time: Triton (torch.compile on GPU) builds its kernel launchers
# with one. The air-gapped CUDA base (images/build-base.sh --with-cc) already has it; the CPU image has none.
RUN set -eu; \
    if [ "$FLAVOUR" = cuda ] && ! command -v cc >/dev/null; then \
      apt-get update -q && apt-get install -y -q --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*; \
    fi; \
    mkdir -p /app /work /in /out /data; \
    chmod 0755 /app /work /in /out /data
COPY --from=deps /opt/venv /opt/venv
COPY trainer/ /app/trainer/
RUN set -eu; \
    rm -rf /app/trainer/train.py /app/trainer/direct.py /app/trainer/prepare; \
    PYTHONPATH=/app /opt/venv/bin/python -m trainer.safe_pt2 --write-warm-up /app/trainer/warm_up.pt2; \
    chmod -R a+rX,go-w /app; \
    /opt/venv/bin/python -m compileall -q /app/trainer
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    AUTORESEARCH_IMAGE_FLAVOUR=${FLAVOUR}
LABEL org.opencontainers.image.title="autoresearch-trial" \
      org.opencontainers.image.description="autoresearch, caged: trial image (trusted harness + evaluator)"
USER 65534:65534
WORKDIR /work
CMD ["python", "-c", "import torch, trainer; print('torch', torch.__version__)"]
