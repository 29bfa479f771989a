"""The GPU self-test of one planned slice or GPU, run as ``python -m workers.selftest '<json request>'`` in a fresh
process (CUDA_VISIBLE_DEVICES is read once, so each slice needs its own process).

It does what a replica does on that device, in order, and stops at the first failure: pin (the UUID check of
``workers/pinning.py``), start CUDA, choose precision and attention where the GPU is seen, load the model and run a
forward pass, compare flash attention with sdpa on the same weights, and run the largest batch the instance may form
while measuring peak memory. It prints one JSON row on stdout (``{"ok", "checks": [{"name", "ok", "detail"}]}``)
and exits 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Vectors of the same weights under flash attention and sdpa differ by rounding only.
FLASH_SDPA_MIN_COSINE = 0.999
TEXTS = ["what is a mig slice", "the quick brown fox jumps over the lazy dog", "gpu", "a cat sits on the mat " * 8]


@dataclass(frozen=True)
class SelftestRequest:
    """What the child checks: the instance's devices and the model settings it would serve with."""

    instance: str
    device_uuids: tuple[str, ...]
    parent_uuid: str | None
    memory_mb: int | None
    model_folder: str
    dtype: str
    attn_implementation: str
    pooling: str | None
    padding_side: str
    max_input_tokens: int | None
    max_batch_tokens: int
    max_concurrency: int


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Row:
    ok: bool = True
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        self.ok = self.ok and ok
        return ok


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def run_checks(request: SelftestRequest) -> Row:
    """Every check of the module docstring on this process's device; never raises."""
    row = Row()
    try:
        _run(request, row)
    except Exception as error:  # a check that broke in an unforeseen way is that check's failure, not a crash
        row.add("unexpected", False, _one_line(error))
    return row


def _run(request: SelftestRequest, row: Row) -> None:
    from workers.pinning import PinningError, pin_to_gpu_devices

    try:
        how = pin_to_gpu_devices(request.device_uuids, request.parent_uuid, request.memory_mb)
    except PinningError as error:
        row.add("pin", False, str(error))
        return
    row.add("pin", True, f"{','.join(request.device_uuids)} recognised by its {how}")

    import torch

    from workers.backends.gpu_probe import probe_gpu

    facts = probe_gpu()
    row.add(
        "cuda", True, f"{facts.name}, sm{facts.capability[0]}{facts.capability[1]}, torch CUDA {torch.version.cuda}"
    )
    engine = _engine(request, facts, row)
    if engine is None:
        return
    from workers.backends.torch_backend import TorchBackend
    from workers.model_card import read_model_card
    from workers.tokenizer import TextTokenizer

    folder = Path(request.model_folder)
    card = read_model_card(folder, request.pooling, request.max_input_tokens)
    tokenizer = TextTokenizer(folder, card.max_input_tokens, card.eos_token_id if card.pooling == "lasttoken" else None)
    started = time.perf_counter()
    backend = TorchBackend(folder, card.pooling, engine.dtype, "cuda", engine.attn_implementation, request.padding_side)
    loaded_s = time.perf_counter() - started
    ids = tokenizer.encode(TEXTS, truncate=True)
    started = time.perf_counter()
    vectors = backend.embed(ids)
    forward_ms = (time.perf_counter() - started) * 1000
    if not row.add(
        "forward",
        bool(torch.isfinite(torch.from_numpy(vectors)).all()),
        f"{engine.dtype}, {engine.attn_implementation}: {len(ids)} texts in {forward_ms:.0f} ms (loaded in "
        f"{loaded_s:.1f} s)",
    ):
        return
    _flash_versus_sdpa(backend, ids, vectors, engine.attn_implementation, row)
    _peak_memory(request, backend, card.max_input_tokens, row)


def _engine(request: SelftestRequest, facts: Any, row: Row) -> Any:
    from orchestrator.planning.engine_choice import EngineChoiceError, choose_engine
    from workers.backends.gpu_probe import trained_dtype
    from workers.model_card import read_model_card

    model_type = read_model_card(Path(request.model_folder), request.pooling, request.max_input_tokens).model_type
    try:
        engine = choose_engine(
            "cuda",
            model_type,
            request.dtype,
            request.attn_implementation,
            facts.flash_problem is None,
            compute_capability=facts.capability,
            trained_dtype=trained_dtype(Path(request.model_folder)),
        )
    except EngineChoiceError as error:
        row.add("engine", False, str(error))
        return None
    why = f" ({engine.note}{': ' + facts.flash_problem if engine.note and facts.flash_problem else ''})"
    row.add("engine", True, f"{engine.dtype}, {engine.attn_implementation}{why if engine.note else ''}")
    return engine


def _flash_versus_sdpa(backend: Any, ids: list[list[int]], flash: Any, attention: str, row: Row) -> None:
    """The same weights under sdpa must give the vectors flash attention gave (switched in place: no second copy)."""
    if attention != "flash_attention_2":
        row.add("flash_vs_sdpa", True, f"n/a ({attention} chosen)")
        return
    import numpy as np

    backend._model.set_attn_implementation("sdpa")
    try:
        sdpa = backend.embed(ids)
    finally:
        backend._model.set_attn_implementation("flash_attention_2")
    cosine = (flash * sdpa).sum(1) / np.linalg.norm(flash, axis=1) / np.linalg.norm(sdpa, axis=1)
    worst = float(cosine.min())
    row.add("flash_vs_sdpa", worst >= FLASH_SDPA_MIN_COSINE, f"min cosine {worst:.5f} (>= {FLASH_SDPA_MIN_COSINE})")


def _peak_memory(request: SelftestRequest, backend: Any, max_input_tokens: int, row: Row) -> None:
    """Run the largest batch the batcher may form and project its peak to ``max_concurrency`` batches at once."""
    import torch

    length = min(max_input_tokens, request.max_batch_tokens)
    count = max(1, request.max_batch_tokens // length)
    vocab = int(backend._model.config.vocab_size)
    batch = torch.randint(10, vocab, (count, length)).tolist()
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated()
    free, total = torch.cuda.mem_get_info()
    context = (total - free) - torch.cuda.memory_reserved()  # what the process holds outside torch's allocator
    torch.cuda.reset_peak_memory_stats()
    try:
        backend._embed_once(batch)  # unsplit: a split would hide that the planned batch does not fit
    except torch.OutOfMemoryError:
        row.add("peak_memory", False, f"a batch of {count} x {length} tokens runs out of memory on this device")
        return
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_reserved()
    projected = context + weights + request.max_concurrency * (peak - weights)
    mib = 2**20
    row.add(
        "peak_memory",
        projected <= total,
        f"{count} x {length} tokens: peak {peak / mib:,.0f} MiB reserved, CUDA context {context / mib:,.0f} MiB; "
        f"x{request.max_concurrency} concurrent about {projected / mib:,.0f} of {total / mib:,.0f} MiB",
    )


def main(argv: list[str]) -> int:
    """Read the request (JSON, argv[1]), run the checks, print the row; 0 when every check passed."""
    raw = json.loads(argv[1])
    raw["device_uuids"] = tuple(raw["device_uuids"])
    row = run_checks(SelftestRequest(**raw))
    print(json.dumps(asdict(row)), flush=True)
    return 0 if row.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
