"""gpu-audit W7: a sticky CUDA error in a batch takes the replica out through Serve's health hook.

The replica is built for real (tiny Qwen3 on a CPU pool, no Ray); the failure is injected where a real one starts, in
the model's forward pass, as torch raises it (``torch.AcceleratorError`` with cudaGetErrorString's words).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import workers.assembly
import workers.replica
from orchestrator.config import parse_config
from orchestrator.contracts.errors import BackendFailure, Unhealthy
from orchestrator.contracts.replica_spec import ReplicaSpec
from orchestrator.hardware.topology import CpuTopology, Topology
from orchestrator.planning.planner import plan
from tests.tiny_models import build_tiny_qwen3
from workers.backends.cuda_errors import is_out_of_memory, sticky_cuda_error
from workers.device_health import DeviceHealth

# What torch 2.13 says after a kernel wrote out of bounds (c10/cuda/CUDAException.cpp), first line first.
ILLEGAL_ADDRESS = (
    "CUDA error: an illegal memory access was encountered\n"
    "Search for `cudaErrorIllegalAddress' in https://docs.nvidia.com/cuda/cuda-runtime-api/group__CUDART__TYPES.html "
    "for more information.\nCUDA kernel errors might be asynchronously reported at some other API call, so the "
    "stacktrace below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
)


@pytest.fixture
def restored_cpu_state() -> Iterator[None]:
    import torch

    affinity, threads = os.sched_getaffinity(0), torch.get_num_threads()
    yield
    os.sched_setaffinity(0, affinity)
    torch.set_num_threads(threads)


class Replica(workers.replica.EmbeddingReplica):
    """The deployment class, stopped by the test (``stop``) rather than by the garbage collector."""

    def __del__(self) -> None:
        pass

    async def stop(self) -> None:
        await workers.replica.EmbeddingReplica.__del__(self)


async def start_replica(folder: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Replica, list[object]]:
    """An EmbeddingReplica as Serve starts one (rank 0, no hub, no lane), and the backends it loaded."""
    raw = {"model": {"path": str(folder)}, "mig_instances": [{"name": "one", "type": "cpu"}]}
    placement = plan(parse_config(raw), Topology(cpu=CpuTopology(cores=(0,))))
    spec = ReplicaSpec(
        placement, None, str(folder), "q", "lasttoken", "auto", "auto", "left", {}, None, "none", None, None, True, 8, 1
    )
    monkeypatch.setattr(workers.replica, "_current_rank", lambda: 0)
    monkeypatch.setattr(workers.replica, "_find_hub", lambda: None)
    monkeypatch.setattr(workers.replica, "keep_serve_grpc_on_loopback", lambda: None)
    loaded: list[object] = []
    real_load = workers.assembly.load_backend
    monkeypatch.setattr(workers.assembly, "load_backend", lambda *a: loaded.append(real_load(*a)) or loaded[-1])
    replica = Replica.__new__(Replica)
    await replica.__init__(spec)  # Serve awaits the async constructor the same way
    return replica, loaded


async def test_a_sticky_cuda_error_in_a_batch_fails_the_health_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restored_cpu_state: None
) -> None:
    import torch

    replica, (backend,) = await start_replica(build_tiny_qwen3(tmp_path / "qwen3"), monkeypatch)
    batcher = replica._service.batcher
    try:
        replica.check_health()  # warm-up and calibration passed
        assert (await batcher.submit([[5, 6, 7]])).vectors.shape[0] == 1

        calls = []

        def lost_device(_module: object, _inputs: object) -> None:
            calls.append(1)
            raise torch.AcceleratorError(ILLEGAL_ADDRESS)

        backend._model.register_forward_pre_hook(lost_device)
        with pytest.raises(BackendFailure, match="illegal memory access"):
            await batcher.submit([[5, 6, 7]])
        with pytest.raises(Unhealthy, match=r"sticky CUDA error \(illegal memory access: CUDA error: an illegal"):
            replica.check_health()
        # Later batches are refused without touching the lost device again, as a 503 (not the model's 424).
        with pytest.raises(Unhealthy, match="sticky CUDA error"):
            await batcher.submit([[8, 9]])
        assert len(calls) == 1
    finally:
        await replica.stop()


async def test_an_ordinary_batch_failure_leaves_the_replica_healthy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restored_cpu_state: None
) -> None:
    replica, (backend,) = await start_replica(build_tiny_qwen3(tmp_path / "qwen3"), monkeypatch)
    batcher = replica._service.batcher

    def bad_input(_module: object, _inputs: object) -> None:
        raise IndexError("index out of range in self")  # an id past the vocabulary, on CPU

    handle = backend._model.register_forward_pre_hook(bad_input)
    try:
        with pytest.raises(BackendFailure, match="index out of range"):
            await batcher.submit([[5, 6, 7]])
        replica.check_health()
        handle.remove()
        assert (await batcher.submit([[5, 6, 7]])).vectors.shape[0] == 1
    finally:
        await replica.stop()


def test_which_errors_are_sticky() -> None:
    import torch

    assert sticky_cuda_error(torch.AcceleratorError("CUDA error: device-side assert triggered")) == "device-side assert"
    assert sticky_cuda_error(RuntimeError("CUDA error: uncorrectable ECC error encountered")) is not None
    assert sticky_cuda_error(RuntimeError("CUDA error: unspecified launch failure")) is not None
    coded = torch.AcceleratorError("CUDA error")  # torch >= 2.8 carries the cudaError_t itself
    coded.error_code = 719
    assert sticky_cuda_error(coded) == "cudaErrorLaunchFailure"
    # Recoverable: out of memory (split and retry), invalid arguments, and words without CUDA in them.
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert sticky_cuda_error(oom) is None and is_out_of_memory(oom)
    assert sticky_cuda_error(RuntimeError("CUDA error: out of memory")) is None
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert sticky_cuda_error(RuntimeError("CUDA error: invalid argument")) is None
    assert sticky_cuda_error(ValueError("illegal instruction in the prompt template")) is None
    assert not is_out_of_memory(RuntimeError("CUDA error: an illegal memory access was encountered"))


def test_the_first_sticky_error_is_the_reason_kept() -> None:
    health = DeviceHealth("cuda device of instance a")
    health.record(RuntimeError("CUDA error: invalid argument"))
    health.check()
    health.record(RuntimeError("CUDA error: misaligned address"))
    health.record(RuntimeError("CUDA error: unspecified launch failure"))
    assert health.lost == "misaligned address: CUDA error: misaligned address"
