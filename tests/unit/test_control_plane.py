"""The control-plane watcher with a scripted probe, and the process cleanup of `up` on a real process tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from orchestrator.serving.control_plane import ControlPlaneWatch, descendants
from tests.conftest import REPO


def test_the_first_problem_is_kept_and_reported_once() -> None:
    answers = iter([None, None, "Ray's raylet exited", None])
    reported: list[str] = []
    done = threading.Event()
    watch = ControlPlaneWatch(lambda: next(answers), period_s=0.01, on_lost=lambda p: (reported.append(p), done.set()))
    watch.start()
    assert done.wait(5)
    watch.stop()
    assert watch.lost == "Ray's raylet exited" and reported == ["Ray's raylet exited"]


def test_a_probe_that_fails_counts_as_a_lost_control_plane() -> None:
    def probe() -> str | None:
        raise ConnectionError("GCS unreachable")

    watch = ControlPlaneWatch(probe, period_s=0.01)
    watch.start()
    deadline = time.monotonic() + 5
    while watch.lost is None and time.monotonic() < deadline:
        time.sleep(0.01)
    watch.stop()
    assert watch.lost == "the control plane could not be asked (ConnectionError: GCS unreachable)"


def test_descendants_cover_the_whole_tree() -> None:
    tree = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 5
        while len(descendants(tree.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(descendants(tree.pid)) == 2
        assert tree.pid in descendants()
    finally:
        for pid in [*descendants(tree.pid), tree.pid]:
            os.kill(pid, signal.SIGKILL)
        tree.wait()


SCRIPT = textwrap.dedent(
    """
    import os, subprocess, sys, time, threading
    from orchestrator.serving.control_plane import adopt_orphans, descendants, kill_descendants
    from orchestrator.cli.serve import _stop_on_signals
    assert adopt_orphans()
    # A child that starts a grandchild and exits at once, as a raylet dying under its agents does.
    subprocess.run(["sh", "-c", "sleep 60 > /dev/null 2>&1 &"], check=True)
    time.sleep(0.3)
    orphans = descendants()
    print("adopted", len(orphans), "pids", *orphans, flush=True)
    if sys.argv[1] == "kill":
        kill_descendants()
        time.sleep(0.3)
        print("left", sum(1 for pid in orphans if os.path.exists(f"/proc/{pid}")
                          and open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z"), flush=True)
    else:
        stop = threading.Event()
        _stop_on_signals(stop)
        os.kill(os.getpid(), 2)
        assert stop.wait(5)
        print("draining", flush=True)
        os.kill(os.getpid(), 2)  # the second Ctrl-C while the drain "hangs"
        time.sleep(30)
        print("not reached", flush=True)
    """
)


def test_orphans_are_adopted_and_ended_with_up() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, "kill"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "adopted 1" in done.stdout and "left 0" in done.stdout


def test_a_second_signal_exits_at_once_and_takes_the_children_along() -> None:
    command = [sys.executable, "-c", SCRIPT, "signal"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stdout + done.stderr
    assert "draining" in done.stdout and "not reached" not in done.stdout  # it did not wait out the "hang"
    assert "Second signal: stopping now" in done.stdout
    orphans = [int(pid) for pid in done.stdout.split("pids", 1)[1].split("\n")[0].split()]
    assert orphans and not [pid for pid in orphans if alive(pid)]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


STUCK = textwrap.dedent(
    """
    import signal, subprocess, time
    from orchestrator.serving.control_plane import SignalDeadline

    # A main thread that never stops its own way (as when Ray holds it in a C call): the Python-level handler does
    # nothing, so only the C-level handler (which writes the wakeup fd) sees the signal.
    signal.signal(signal.SIGINT, lambda *_: None)
    child = subprocess.Popen(["sleep", "60"])
    deadline = SignalDeadline(1.0, on_expiry=lambda signum: print("expired", signum, flush=True))
    print("ready", child.pid, flush=True)
    while True:
        time.sleep(60)
    """
)


def test_a_signal_during_start_up_ends_the_process_even_if_its_main_thread_does_not_stop() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", STUCK], cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("ready"), line
        grandchild = int(line.split()[1])
        os.kill(process.pid, signal.SIGINT)
        code = process.wait(timeout=30)
        output = process.stdout.read()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert code == 130 and f"expired {int(signal.SIGINT)}" in output
    time.sleep(0.2)
    assert not alive(grandchild)
