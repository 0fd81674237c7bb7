"""``distributed.setup``: the backend and device each torchrun rank gets — NCCL and its own GPU where there are
GPUs, gloo on the CPU — checked without starting a process group (test_ddp.py runs real gloo ranks)."""

import pytest
import torch

from mobilenet_v1 import distributed


@pytest.mark.parametrize(("cuda", "backend", "device"), [(True, "nccl", "cuda:1"), (False, "gloo", "cpu")])
def test_a_torchrun_rank_gets_the_backend_of_its_device(monkeypatch, cuda, backend, device):
    calls = {}
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.setdefault("set_device", index))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: calls.setdefault("backend", backend))
    info = distributed.setup("auto")
    assert calls["backend"] == backend
    assert str(info.device) == device and (info.rank, info.world, info.local_rank) == (1, 2, 1)
    assert calls.get("set_device") == (1 if cuda else None)  # each rank on its own GPU


def test_one_process_starts_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **_: pytest.fail("no group for one process"))
    info = distributed.setup("auto")
    assert not info.enabled and info.device.type == "cpu"
