"""A GPU train container, as the real engine runs it: compiled kernels load from /compile, never from /tmp.

torch.compile on CUDA builds kernels and launcher stubs as shared objects in its cache dirs and loads them with
dlopen. With the caches on the noexec /tmp every h100 trial failed at its first compiled step (InductorError on an
H200, docs/benchmarks.md "A trial on a GPU"). No GPU here: the container is the GPU policy's train container minus
its device request, and a shared object from the image stands in for a compiled kernel.
"""
from __future__ import annotations

import os
import uuid

import pytest

from runner.sandbox import spec
from tests.sandbox_kit import TEST_RUN_PREFIX, open_up, policy

pytestmark = pytest.mark.docker

LOAD_FROM_BOTH = r"""
import ctypes, os, shutil, _ctypes
src = _ctypes.__file__
cache = os.environ["TORCHINDUCTOR_CACHE_DIR"]
os.makedirs(cache)
for d in ("/tmp", cache):
    dst = shutil.copy(src, os.path.join(d, "kernel.so"))
    try:
        ctypes.CDLL(dst)
        print(d, "loaded", flush=True)
    except OSError as e:
        print(d, "refused:", e, flush=True)
"""


def test_a_gpu_train_container_loads_compiled_kernels_from_compile_and_never_from_tmp(tmp_path, trial_image,
                                                                                      docker_client):
    pol = policy(flavour="cuda", gpu="all")
    data, train_dir = tmp_path / "data", tmp_path / "train"
    for d in (data / "train", data / "tokenizer", train_dir):
        d.mkdir(parents=True)
    open_up(tmp_path)
    tag, tid = f"{TEST_RUN_PREFIX}-{os.getpid()}", uuid.uuid4().hex[:8]
    vol = docker_client.volumes.create(**spec.output_volume(pol, name=spec.name(tag, tid, "out"),
                                                            labels=spec.labels(tag, tid, "out")))
    kw = spec.train(pol, image=trial_image.id, name=spec.name(tag, tid, "train"),
                    labels=spec.labels(tag, tid, "train"), train_dir=train_dir, data_dir=data, out_volume=vol.name)
    assert kw.pop("device_requests")                     # the only part of a GPU container this machine lacks
    kw["command"] = ["python", "-c", LOAD_FROM_BOTH]
    container = None
    try:
        container = docker_client.containers.create(**kw)
        container.start()
        assert container.wait(timeout=60)["StatusCode"] == 0, container.logs().decode()
        out = container.logs().decode()
    finally:
        if container is not None:
            container.remove(force=True)
        vol.remove(force=True)
    assert "/compile/inductor loaded" in out, out
    assert "/tmp refused:" in out and "failed to map segment" in out, out
