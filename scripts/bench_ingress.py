"""Benchmark of the ingress alone: requests/s and front-door CPU per request, with replicas that run no model.

On a small machine the model, not the front door, limits what a service answers, so a served benchmark cannot say
what the front door costs. Here every replica serves a model-less folder (``workers/backends/null_backend.py``): the
request takes the whole way (the front door's HTTP parsing, balancing and direct lane; the replica's HTTP app,
validation, word-level tokenizer, batcher and serialisation) but the "model" answers placeholder vectors at once.

1. Writes the marker folder (a BERT-shaped ``config.json`` of all-MiniLM-L6-v2's sizes, so the planner sizes it like
   that model; a weights file without tensors; a word-level ``tokenizer.json``; the marker) and a config
   (``bench_config``: CPU pools, direct transport; ``--set key=value`` adds or replaces any config key).
2. Starts ``orchestrator up`` as a child process and checks that it answers placeholder vectors of the right shape
   under the benchmark's name (so a real model is never measured by mistake).
3. For each client concurrency: short probes size a run of about ``--seconds``; over that run, the CPU time (user +
   sys from ``/proc/<pid>/stat``, read by psutil) of the front door (the ``up`` process, with the Ray driver's
   threads, and its front-door worker processes if ``server.front_door_workers`` starts any), of the replicas (Ray
   workers running ``ServeReplica``), of the rest of Ray (raylet, GCS, Serve's controller, the metrics hub...) and
   of this load generator, per request answered.

Usage: ``python scripts/bench_ingress.py [--seconds 10] [--concurrency 1 8 32] [--pools 2] [--threads 1]
[--set server.some_key=value] [--json out.json] [--markdown docs/x.md]``. Linux only (``/proc``); loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import struct
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from orchestrator.frontdoor.workers import WORKER_MODULE  # noqa: E402
from scripts.bench import console, drive, free_port, running_service  # noqa: E402
from tests.corpus import sentences  # noqa: E402
from workers.backends.null_backend import MARKER_FILE, SERVED_NAME, marker_content  # noqa: E402

# all-MiniLM-L6-v2's sizes: the planner sizes the placeholder like the model the served benchmarks use.
BERT_SHAPE = {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6, "intermediate_size": 1536}
BERT_SHAPE |= {"num_attention_heads": 12, "vocab_size": 30522, "max_position_embeddings": 512, "pad_token_id": 0}
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def write_bench_model(folder: Path, words: Iterable[str] = (), max_input_tokens: int = 256) -> Path:
    """Write the ingress benchmark's model-less folder into ``folder`` (created) and return it.

    ``words``: the tokenizer's vocabulary besides its special tokens (others are ``[UNK]``). The tokenizer splits on
    whitespace only: about half of what MiniLM's WordPiece costs (0.23-0.27 ms against 0.50-0.89 ms per 16 corpus
    sentences), so the replicas still validate and count tokens as a real service does while leaving more of the
    cores to the front door.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(BERT_SHAPE, indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_input_tokens}))
    # A valid safetensors file holding no tensor (an 8-byte header length, then the JSON header): the folder passes
    # as a model folder, and anything that tries to load weights from it fails at once.
    header = json.dumps({"__metadata__": {"note": "orchestrator ingress benchmark: no weights"}}).encode()
    header += b" " * (-len(header) % 8)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    vocabulary = {token: index for index, token in enumerate(dict.fromkeys([*SPECIAL_TOKENS, *words]))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocabulary["[CLS]"]), ("[SEP]", vocabulary["[SEP]"])],
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / MARKER_FILE).write_text(json.dumps(marker_content(), indent=2))
    return folder


def bench_config(
    port: int, folder: Path, pools: int = 2, threads: int = 1, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The benchmark's config (the one place it is made): ``pools`` CPU pools of ``threads`` threads serving the
    model-less ``folder`` over direct lanes, then ``overrides`` (dotted keys, see ``parse_overrides``) applied."""
    config: dict[str, Any] = {
        "version": 1,
        # backend torch: auto would export the (weightless) folder to ONNX at start; the replicas import neither.
        "model": {"name": SERVED_NAME, "path": str(folder), "backend": "torch"},
        "server": {"port": port, "transport": "direct"},
        "cpu_pools": {"count": pools, "threads_per_pool": threads},
        "mig_instances": [{"name": f"pool-{n}", "type": "cpu"} for n in range(pools)],
    }
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        section = config
        for key in parents:
            section = section.setdefault(key, {})
            if not isinstance(section, dict):
                raise ValueError(f"--set {dotted}: {key} is not a section")
        section[leaf] = value
    return config


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["server.max_connections=64", ...]`` as ``{"server.max_connections": 64}`` (values read as YAML)."""
    import yaml

    overrides = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise ValueError(f"--set {item!r}: expected key=value (for example server.max_connections=64)")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def write_config(path: Path, config: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def cpu_s(process: psutil.Process) -> float:
    """User + system CPU seconds of every thread of ``process`` so far (``/proc/<pid>/stat``; not its children's)."""
    times = process.cpu_times()
    return times.user + times.system


def group_of(process: psutil.Process, up: psutil.Process) -> str:
    """Which part of the service a process of ``up``'s tree is: the front door (``up`` and its front-door worker
    processes, ``server.front_door_workers``), a replica, or the rest of Ray."""
    command = " ".join(process.cmdline())
    if process.pid == up.pid or WORKER_MODULE in command:
        return "front_door"
    return "replicas" if "ServeReplica" in command else "ray_rest"


def cpu_by_process(up: psutil.Process) -> tuple[dict[int, tuple[str, float]], dict[tuple[int, int], float]]:
    """(group, CPU seconds) of ``up`` and every process below it (front-door workers, Ray's raylet, GCS and
    workers), and the CPU seconds of every thread of the front door's processes by (pid, thread id)."""
    processes, threads = {}, {}
    for process in [up, *up.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            group = group_of(process, up)
            processes[process.pid] = (group, cpu_s(process))
            if group == "front_door":
                threads |= {(process.pid, t.id): t.user_time + t.system_time for t in process.threads()}
    return processes, threads


@dataclass(frozen=True)
class Snapshot:
    processes: dict[int, tuple[str, float]]
    front_door_threads: dict[tuple[int, int], float]
    load_generator_s: float
    machine: tuple[float, float]
    at_s: float

    @classmethod
    def take(cls, up: psutil.Process) -> Snapshot:
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - machine.iowait - machine.guest - machine.guest_nice  # guest: in user
        here = cpu_s(psutil.Process())
        return cls(*cpu_by_process(up), here, (busy, busy + machine.idle + machine.iowait), time.perf_counter())


def cpu_between(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds per group between two snapshots (a process started in between counts from zero), the busiest
    thread of the front door, the load generator's, and the machine's busy seconds and wall seconds."""
    spent = {"front_door": 0.0, "replicas": 0.0, "ray_rest": 0.0}
    for pid, (group, seconds) in after.processes.items():
        spent[group] += seconds - before.processes.get(pid, (group, 0.0))[1]
    spent["front_door_busiest_thread"] = max(
        (seconds - before.front_door_threads.get(key, 0.0) for key, seconds in after.front_door_threads.items()),
        default=0.0,
    )
    spent["load_generator"] = after.load_generator_s - before.load_generator_s
    spent["machine_busy"] = after.machine[0] - before.machine[0]
    spent["machine_total"] = after.machine[1] - before.machine[1]
    spent["wall"] = after.at_s - before.at_s
    return spent


@dataclass(frozen=True)
class Point:
    """One concurrency's figures; ``*_ms`` are CPU milliseconds per request answered, ``*_share`` of one core."""

    clients: int
    requests: int
    wall_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    front_door_ms: float
    front_door_share: float
    front_door_busiest_thread_share: float
    replicas_ms: float
    ray_rest_ms: float
    load_generator_ms: float
    machine_busy: float  # of all the machine's cores

    @property
    def per_front_door_core(self) -> float:
        """Requests/s one front-door core would answer at this CPU cost (1000 / front_door_ms)."""
        return 1000.0 / self.front_door_ms if self.front_door_ms > 0 else float("nan")


def check_answers(url: str, dimensions: int) -> None:
    """Raise unless the service answers placeholder vectors of ``dimensions`` under the benchmark's name."""
    body = json.dumps({"input": ["one", "two words", "three words here"]}).encode()
    request = urllib.request.Request(f"{url}/v1/embeddings", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    shapes = [len(item["embedding"]) for item in answer["data"]]
    if answer.get("model") != SERVED_NAME or shapes != [dimensions] * 3:
        raise SystemExit(f"not the model-less service: model {answer.get('model')!r}, vector sizes {shapes}")


def measure(url: str, texts: list[str], clients: int, per_request: int, seconds: float, up: psutil.Process) -> Point:
    """About ``seconds`` of ``clients`` concurrent clients, measured. Sized by two probes that also warm this level
    up: 50 requests size one of about a second, whose rate sizes the measured run."""
    requests = max(clients * 4, 50)
    for next_run_s in (1.0, seconds):
        rate = asyncio.run(drive(url, texts, clients, per_request, requests))["emb_per_s"] / per_request
        requests = max(clients * 4, round(rate * next_run_s))
    before = Snapshot.take(up)
    result = asyncio.run(drive(url, texts, clients, per_request, requests))
    spent = cpu_between(before, Snapshot.take(up))
    wall = spent["wall"]

    def per_request_ms(seconds_spent: float) -> float:
        return seconds_spent / requests * 1000

    return Point(
        clients=clients,
        requests=requests,
        wall_s=wall,
        requests_per_s=requests / wall,
        p50_ms=result["p50_ms"],
        p99_ms=result["p99_ms"],
        front_door_ms=per_request_ms(spent["front_door"]),
        front_door_share=spent["front_door"] / wall,
        front_door_busiest_thread_share=spent["front_door_busiest_thread"] / wall,
        replicas_ms=per_request_ms(spent["replicas"]),
        ray_rest_ms=per_request_ms(spent["ray_rest"]),
        load_generator_ms=per_request_ms(spent["load_generator"]),
        machine_busy=spent["machine_busy"] / spent["machine_total"] if spent["machine_total"] else float("nan"),
    )


def idle_cost(up: psutil.Process, seconds: float) -> dict[str, float]:
    """CPU per wall second of each group with no request at all: the fixed part inside every point's figures."""
    before = Snapshot.take(up)
    time.sleep(seconds)
    spent = cpu_between(before, Snapshot.take(up))
    return {group: spent[group] / spent["wall"] for group in ("front_door", "replicas", "ray_rest")}


COLUMNS = (
    ("clients", "clients", "{:d}"),
    ("requests_per_s", "req/s", "{:.0f}"),
    ("p50_ms", "p50 ms", "{:.1f}"),
    ("p99_ms", "p99 ms", "{:.1f}"),
    ("front_door_ms", "front door CPU ms/req", "{:.2f}"),
    ("per_front_door_core", "req/s per front-door core", "{:.0f}"),
    ("front_door_share", "front door (cores)", "{:.2f}"),
    ("front_door_busiest_thread_share", "front door's busiest thread", "{:.2f}"),
    ("replicas_ms", "replicas CPU ms/req", "{:.2f}"),
    ("ray_rest_ms", "rest of Ray ms/req", "{:.2f}"),
    ("load_generator_ms", "load generator ms/req", "{:.2f}"),
    ("machine_busy", "machine busy", "{:.0%}"),
)


def cells(point: Point) -> list[str]:
    return [fmt.format(getattr(point, key)) for key, _, fmt in COLUMNS]


def markdown_table(points: Sequence[Point]) -> list[str]:
    return [
        "| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(cells(point)) + " |" for point in points),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pools", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads per pool")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per concurrency (about)")
    parser.add_argument("--texts-per-request", type=int, default=16)
    parser.add_argument("--corpus", type=int, default=1024)
    parser.add_argument("--idle-seconds", type=float, default=3.0, help="idle CPU measured before the load")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config key, dotted"
    )
    parser.add_argument("--json", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--markdown", type=Path, help="append the results as a markdown section to this file")
    args = parser.parse_args()

    texts = sentences(args.corpus, seed=11)
    words = sorted({word for text in texts for word in text.split()})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_bench_model(Path(tmp) / "ingress-bench", words)
        config = bench_config(port, folder, args.pools, args.threads, parse_overrides(args.overrides))
        config_path = write_config(Path(tmp) / "ingress.yaml", config)
        points = []
        with running_service(config_path, url, "ingress") as cold_start_s:
            up = next(p for p in psutil.Process().children() if "orchestrator.cli" in " ".join(p.cmdline()))
            check_answers(url, BERT_SHAPE["hidden_size"])
            asyncio.run(drive(url, texts, 4, args.texts_per_request, 32))  # every replica's first requests
            idle = idle_cost(up, args.idle_seconds)
            for clients in args.concurrency:
                with console.status(f"{clients} clients, about {args.seconds:g} s..."):
                    points.append(measure(url, texts, clients, args.texts_per_request, args.seconds, up))

    report(args, config, points, idle, cold_start_s)


def report(
    args: argparse.Namespace, config: dict[str, Any], points: list[Point], idle: dict[str, float], cold_start_s: float
) -> None:
    """Print the table (markdown, readable in a terminal or a log); write the JSON file and append the markdown
    section when asked."""
    shape = f"{args.pools} model-less pools x {args.threads} thread(s), {args.texts_per_request} texts per request"
    print(f"Ingress alone: {shape}, {os.cpu_count()} cores", *markdown_table(points), sep="\n")
    idle_line = (
        f"Idle (no requests, {args.idle_seconds:g} s): front door {idle['front_door'] * 1000:.0f} ms of CPU per "
        f"second, replicas {idle['replicas'] * 1000:.0f}, rest of Ray {idle['ray_rest'] * 1000:.0f}; "
        f"cold start {cold_start_s:.1f} s."
    )
    print(idle_line)
    stamp, command = time.strftime("%Y-%m-%d %H:%M"), " ".join(["python scripts/bench_ingress.py", *sys.argv[1:]])
    if args.json:
        result = {
            "date": stamp,
            "command": command,
            "cores": os.cpu_count(),
            "config": {**config, "model": {**config["model"], "path": "<temporary marker folder>"}},
            "cold_start_s": cold_start_s,
            "idle_cpu_s_per_s": idle,
            "points": [{**asdict(p), "per_front_door_core": p.per_front_door_core} for p in points],
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        lines = [
            "",
            f"#### Run of {stamp} ({os.cpu_count()} cores)",
            "",
            f"`{command}`: {shape}.",
            "",
            *markdown_table(points),
        ]
        with args.markdown.open("a") as handle:
            handle.write("\n".join([*lines, "", idle_line]) + "\n")


if __name__ == "__main__":
    main()
