"""The ONNX cache when the disk is against it (issue 14, finding 8): a file in the cache's place, a read-only or full
file system, a disk that fills during the export, and a cached graph that matches its manifest but does not load.
Each fails in one line with the fix, before any export, or is rebuilt; nothing partial is left behind.

The read-only and full file systems are real tmpfs mounts (root only; skipped where mounting is not allowed)."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.backends.onnx_backend import OnnxBackend
from workers.backends.onnx_export import GRAPH, MANIFEST, OnnxExportError, _file_sha256, cached_graph
from workers.model_card import read_model_card


@pytest.fixture
def exporter_calls() -> list[Path]:
    return []


def fake_exporter(source: Path, calls: list[Path]):  # type: ignore[no-untyped-def]
    """Copies a real exported graph (``source``) into place, counting the calls."""

    def export(folder: Path, target: Path) -> None:
        calls.append(folder)
        shutil.copyfile(source, target)

    return export


@pytest.fixture(scope="module")
def real_graph(minilm_folder: Path) -> Path:
    return cached_graph(minilm_folder).path


def mount_tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    yield from mount_tmpfs(tmp_path / "full", "size=4m")


@pytest.fixture
def roomy_disk(tmp_path: Path) -> Iterator[Path]:
    yield from mount_tmpfs(tmp_path / "roomy", "size=512m")


def test_a_file_in_place_of_the_cache_fails_at_once(minilm_folder: Path, tmp_path: Path, exporter_calls) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    with pytest.raises(
        OnnxExportError, match=r"the ONNX cache path .*/cache is a file, not a folder: remove it or set"
    ):
        cached_graph(minilm_folder, blocker / "onnx", exporter=fake_exporter(Path("/dev/null"), exporter_calls))
    assert exporter_calls == []


def test_a_read_only_cache_fails_at_once_but_a_prepared_one_is_read(
    minilm_folder: Path, real_graph: Path, roomy_disk: Path, exporter_calls
) -> None:
    export = fake_exporter(real_graph, exporter_calls)
    prepared = cached_graph(minilm_folder, roomy_disk / "prepared", exporter=export)  # as `orchestrator export` does
    subprocess.run(["mount", "-o", "remount,ro", str(roomy_disk)], check=True)
    again = cached_graph(minilm_folder, roomy_disk / "prepared", exporter=export)
    assert not again.exported_now and again.path == prepared.path and len(exporter_calls) == 1
    with pytest.raises(OnnxExportError, match=r"cannot write the ONNX cache at .*\(Read-only file system\): set model"):
        cached_graph(minilm_folder, roomy_disk / "other", exporter=export)
    assert len(exporter_calls) == 1


def test_a_full_disk_is_refused_before_exporting(
    minilm_folder: Path, real_graph: Path, full_disk: Path, exporter_calls
) -> None:
    with pytest.raises(
        OnnxExportError, match=r"not enough space for the ONNX export at .*: \d+ MiB free, about \d+ MiB"
    ):
        cached_graph(minilm_folder, full_disk / "onnx", exporter=fake_exporter(real_graph, exporter_calls))
    assert exporter_calls == []


def test_a_disk_that_fills_during_the_export_leaves_nothing_behind(minilm_folder: Path, tmp_path: Path) -> None:
    def filling(folder: Path, target: Path) -> None:
        target.write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OnnxExportError, match=r"failed \(No space left on device\): free some space or set"):
        cached_graph(minilm_folder, tmp_path, exporter=filling)
    assert not list(tmp_path.rglob("*.onnx")) and not list(tmp_path.rglob(MANIFEST))


def test_a_cached_graph_that_does_not_load_is_rebuilt(minilm_folder: Path, real_graph: Path, tmp_path: Path) -> None:
    calls: list[Path] = []
    first = cached_graph(minilm_folder, tmp_path, exporter=fake_exporter(real_graph, calls))
    # A damaged graph whose manifest was rewritten to match: the digest check passes, the load does not.
    first.path.write_bytes(b"not an onnx graph")
    manifest = json.loads((first.path.parent / MANIFEST).read_text())
    manifest["graph_sha256"] = _file_sha256(first.path)
    (first.path.parent / MANIFEST).write_text(json.dumps(manifest))
    cached = cached_graph(minilm_folder, tmp_path, exporter=fake_exporter(real_graph, calls))
    assert not cached.exported_now and len(calls) == 1
    card = read_model_card(minilm_folder)
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime's own error type
        OnnxBackend(cached.path, card.pooling, 1, card.pad_token_id, card.hidden_size)
    rebuilt = cached_graph(
        minilm_folder, tmp_path, exporter=fake_exporter(real_graph, calls), discard_sha256=cached.sha256
    )
    assert rebuilt.exported_now and len(calls) == 2 and rebuilt.path.name == GRAPH
    OnnxBackend(rebuilt.path, card.pooling, 1, card.pad_token_id, card.hidden_size)  # loads
    # A second replica that saw the same damaged graph finds the new one and exports nothing.
    again = cached_graph(
        minilm_folder, tmp_path, exporter=fake_exporter(real_graph, calls), discard_sha256=cached.sha256
    )
    assert not again.exported_now and again.sha256 == rebuilt.sha256 and len(calls) == 2
