"""What another user of the machine can do to a running `orchestrator up`: nothing of its Ray, and no API key.

The attack this guards against (docs/reliability.md): an embedded Ray without token auth served its job API on the
machine's network address, and one `curl` from uid `nobody` ran `id` as the service's user and printed the API key
from the environment every Ray process inherited. Here a real `up` runs with an API key; the test then acts as
`nobody` (``setpriv``) with nothing but curl, as that attacker did, and as root with the Ray token to show that the
same probes do reach the services when the credential is given (so the refusals are not an artefact of the probe).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import free_port, one_pool_config, start_up

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
JOB_AGENT_PORT = 52365  # Ray's DEFAULT_DASHBOARD_AGENT_LISTEN_PORT
SUBMISSION = json.dumps({"entrypoint": "id; env"})  # what the attack ran
EMPTY_GRPC_MESSAGE = b"\0\0\0\0\0"  # uncompressed, length 0: a valid request for RPCs that take no fields

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to act as another user (setpriv)"
)


def curl(args: list[str], as_nobody: bool, stdin: bytes | None = None) -> str:
    """curl's verbose output (headers and trailers of both directions) and body, as one text."""
    command = [*(NOBODY if as_nobody else []), "curl", "-sS", "-m", "10", "-v", *args]
    done = subprocess.run(command, input=stdin, capture_output=True, timeout=30)
    return done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")


def grpc_status(address: str, token: str | None, as_nobody: bool) -> str:
    """The grpc-status trailer of one GCS call made with curl over HTTP/2 (cleartext), with or without the token."""
    headers = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    if token is not None:
        headers += ["-H", f"authorization: Bearer {token}"]
    output = curl(
        [
            "--http2-prior-knowledge",
            "-X",
            "POST",
            *headers,
            "--data-binary",
            "@-",
            "-o",
            "/dev/null",
            f"http://{address}/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",
        ],
        as_nobody,
        EMPTY_GRPC_MESSAGE,
    )
    for line in output.splitlines():
        if line.startswith("< grpc-status:"):
            return line.split(":", 1)[1].strip()
    return f"no grpc-status in: {output[-400:]}"


def http_status(url: str, token: str | None, as_nobody: bool, body: str | None = None) -> str:
    """The HTTP status (000 where the port does not speak HTTP/1.1), and after a space the start of the body."""
    args = ["-w", "\nSTATUS=%{http_code}"]
    if token is not None:
        args += ["-H", f"authorization: Bearer {token}"]
    if body is not None:
        args += ["-X", "POST", "-H", "content-type: application/json", "-d", body]
    done = subprocess.run(
        [*(NOBODY if as_nobody else []), "curl", "-sS", "-m", "10", *args, url], capture_output=True, timeout=30
    )
    answer, _, status = done.stdout.decode(errors="replace").rpartition("\nSTATUS=")
    return f"{status[:3]} {answer[:40]}"


def port_holder(port: int) -> int:
    """The pid listening on this TCP port of the machine."""
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            return connection.pid
    raise AssertionError(f"nothing listens on port {port}")


def ray_token_of(pid: int) -> str | None:
    """The RAY_AUTH_TOKEN in a process's environment (root reads any; other users none but their own)."""
    for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if entry.startswith(b"RAY_AUTH_TOKEN="):
            return entry.split(b"=", 1)[1].decode()
    return None


def listening(processes: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket the processes hold."""
    found = []
    for process in processes:
        try:
            for connection in process.net_connections(kind="tcp"):
                if connection.status == psutil.CONN_LISTEN:
                    found.append((" ".join(process.cmdline()), connection.laddr.ip, connection.laddr.port))
        except psutil.NoSuchProcess:
            continue
    return found


def plain_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address, with an IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) as the IPv4 address it maps."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def url_host(address: str) -> str:
    ip = plain_ip(address)
    return f"[{ip}]" if ip.version == 6 else str(ip)


def test_another_user_can_neither_run_code_through_ray_nor_read_the_api_key(tmp_path: Path) -> None:
    port = free_port()
    api_key = "sk-" + secrets.token_hex(16)
    config_path = one_pool_config(tmp_path / "config.yaml", port, ", api_key_env: EMBED_API_KEY")
    # A Ray temp dir of its own: every file this Ray writes is searched for the key below (short: socket paths).
    ray_tmp = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))
    log_path = tmp_path / "up.log"
    env = {**os.environ, "EMBED_API_KEY": api_key, "RAY_TMPDIR": str(ray_tmp), "COLUMNS": "200"}
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(name, None)  # exactly as a user starts it, whatever this test process set for its own Ray
    up = start_up(config_path, log_path, env)
    try:
        children = psutil.Process(up.pid).children(recursive=True)
        names = " ".join(" ".join(child.cmdline()) for child in children)
        assert "gcs_server" in names and "raylet" in names and "ray::DashboardAgent" in names, names

        # 1. The key is in no child's environment or command line; the Ray token is in theirs.
        tokens = {}
        for child in children:
            try:
                environ = Path(f"/proc/{child.pid}/environ").read_bytes()
                cmdline = Path(f"/proc/{child.pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            assert api_key.encode() not in environ + cmdline, child.cmdline()
            assert b"EMBED_API_KEY=" not in environ, child.cmdline()
            tokens[child.pid] = (ray_token_of(child.pid), child.cmdline())
        # Ray's agents retitle themselves over their environment block (setproctitle), so theirs reads as their
        # title; they are started by the raylet with its environment, which is read here like every other one.
        by_name = {Path(cmdline[0]).name: token for token, cmdline in tokens.values()}
        ray_token = by_name["raylet"]
        assert ray_token and by_name["gcs_server"] == ray_token, "Ray runs without a token"
        assert {token for token, _ in tokens.values()} <= {ray_token, None}, tokens

        # 2. Nothing of Ray listens beyond loopback.
        sockets = listening(children)
        assert sockets, "found no listening socket of Ray's"
        exposed = [entry for entry in sockets if not plain_ip(entry[1]).is_loopback]
        assert not exposed, f"Ray reachable from the network: {exposed}"

        # 3. As nobody: the job API refuses to list or submit, the GCS refuses every call, Ray's environments
        #    cannot be read. As root with the token, the same probes get through.
        gcs = next(f"{url_host(ip)}:{gcs_port}" for name, ip, gcs_port in sockets if "gcs_server" in name)
        assert grpc_status(gcs, None, as_nobody=True) == "16"  # UNAUTHENTICATED
        assert grpc_status(gcs, "not-the-token", as_nobody=True) == "16"
        assert grpc_status(gcs, ray_token, as_nobody=False) == "0"
        # The job API, where the attack ran `id`: the dashboard agent's, on Ray's well-known port. Its owner is
        # this `up`'s agent, or, where the port was taken first, another Ray of this machine started the same way
        # (the integration tests' own): the positive control uses the token of whichever process holds it.
        job_api = f"http://127.0.0.1:{JOB_AGENT_PORT}/api/job_agent/jobs/"
        holder = psutil.Process(port_holder(JOB_AGENT_PORT))
        holder_token = ray_token_of(holder.pid) or ray_token_of(holder.ppid())  # the agent's raylet: same token
        assert http_status(job_api, None, as_nobody=True, body=SUBMISSION).startswith("401 ")
        assert http_status(job_api, "not-the-token", as_nobody=True, body=SUBMISSION).startswith("403 ")
        assert http_status(job_api, holder_token, as_nobody=False, body="{}").startswith("400 ")  # reached, refused
        # Every other listening socket of this Ray, on both job routes: nothing answers nobody with success.
        for _, ip, ray_port in sockets:
            for path in ("/api/job_agent/jobs/", "/api/jobs/"):
                url = f"http://{url_host(ip)}:{ray_port}{path}"
                answer = http_status(url, None, as_nobody=True, body=SUBMISSION)
                assert not answer.startswith("2"), (ray_port, path, answer)
        gcs_pid = next(child.pid for child in children if "gcs_server" in " ".join(child.cmdline()))
        peek = subprocess.run([*NOBODY, "cat", f"/proc/{gcs_pid}/environ"], capture_output=True, timeout=10)
        assert peek.returncode != 0 and b"RAY_AUTH_TOKEN" not in peek.stdout

        # 4. The service itself still answers its clients, with the key.
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/embeddings",
            data=json.dumps({"input": ["hello"]}).encode(),
            headers={"content-type": "application/json", "authorization": f"Bearer {api_key}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert len(json.loads(response.read())["data"][0]["embedding"]) == 384
        unauthenticated = urllib.request.Request(request.full_url, data=request.data, headers=request.headers)
        unauthenticated.remove_header("Authorization")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(unauthenticated, timeout=30)
        assert refused.value.code == 401

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0, log_path.read_text()
        # 5. No file Ray wrote (logs, session files) holds the key.
        for path in ray_tmp.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert api_key.encode() not in path.read_bytes(), path
    finally:
        if up.poll() is None:
            children = psutil.Process(up.pid).children(recursive=True)
            up.kill()
            for child in children:  # Ray's agents outlive a killed parent: they would keep port 52365
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert "Traceback" not in log_path.read_text()
