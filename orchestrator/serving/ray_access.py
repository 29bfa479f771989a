"""Who may reach the Ray this service runs on: token authentication, loopback binding, and what children inherit.

Ray runs code for whoever reaches its GCS, raylets or job API, so an open Ray is a remote shell. This module decides
the environment Ray is started or joined with, before ``ray.init`` (``deploy.start_ray`` applies it):

* **Embedded Ray** (no ``ray.address``): Ray's token authentication with a fresh random token held only in this
  process's environment (Ray's children inherit it; other users cannot read another user's ``/proc/PID/environ``),
  and Ray's single-machine mode, in which the node address is 127.0.0.1 so that every Ray server binds to loopback.
* **Joining a cluster** (``ray.address``): token authentication with the cluster's own token, which the operator
  shares with every machine (README, "More than one machine"); joining without one is refused with the fix, and a
  token file other users can read is refused too.
* **Secrets**: the variable named by ``server.api_key_env`` is removed from this process's environment before Ray
  starts, so no Ray process, replica or worker ever holds the API key (replicas get its SHA-256 in their spec).

Pure functions of an environment mapping; only ``refresh_ray_config`` touches Ray.
"""

from __future__ import annotations

import secrets
import stat
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.contracts.errors import OrchestratorError

AUTH_MODE = "RAY_AUTH_MODE"
TOKEN = "RAY_AUTH_TOKEN"
TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"
# Ray's single-machine switch (meant for macOS and Windows, read on every platform): with it off, Ray takes the
# loopback address as the node address, and its GCS, raylet, workers and agents bind to that address only.
CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
DEFAULT_TOKEN_FILE = Path(".ray") / "auth_token"

CLUSTER_TOKEN_FIX = (
    "on the head run `ray get-auth-token --generate` and start it with `RAY_AUTH_MODE=token ray start --head`, "
    "then copy ~/.ray/auth_token to this machine (chmod 600) or set RAY_AUTH_TOKEN_PATH"
)


class RayAccessError(OrchestratorError):
    """Ray cannot be started or joined with authentication as configured."""

    error_type = "Deploy"


@dataclass(frozen=True)
class RayAccess:
    """The environment changes to make before ``ray.init`` and the warnings to show the operator."""

    set_env: dict[str, str]
    unset_env: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    def apply(self, environ: MutableMapping[str, str]) -> None:
        """Write the changes into ``environ`` (``os.environ`` in production)."""
        for name in self.unset_env:
            environ.pop(name, None)
        environ.update(self.set_env)


def embedded_access(environ: Mapping[str, str], secret_env: tuple[str, ...] = ()) -> RayAccess:
    """Access for a Ray this process starts on this machine: token auth, loopback only, secrets removed.

    The token is the operator's own ``RAY_AUTH_TOKEN`` when set (so their ``ray`` CLI can reach this Ray), else a new
    random one per process: it is never written to disk and dies with the service. An explicit
    ``RAY_AUTH_MODE=disabled`` is overridden: an embedded Ray has no client but this process.
    """
    set_env = {AUTH_MODE: "token", CLUSTER_SWITCH: "0"}
    if not environ.get(TOKEN):
        set_env[TOKEN] = secrets.token_hex(32)
    warnings = ()
    if environ.get(AUTH_MODE, "").lower() == "disabled":
        warnings = ("RAY_AUTH_MODE=disabled is ignored: the embedded Ray always requires its token",)
    return RayAccess(set_env=set_env, unset_env=_present(environ, secret_env), warnings=warnings)


def cluster_access(environ: Mapping[str, str], secret_env: tuple[str, ...] = (), home: Path | None = None) -> RayAccess:
    """Access for joining the Ray cluster at ``ray.address`` (or for ``orchestrator worker``'s ``ray start``).

    Raises RayAccessError when token auth is on (the default) and no token is found, or when the token file can be
    read by other users. An explicit ``RAY_AUTH_MODE=disabled`` is respected, with a warning.
    """
    unset = _present(environ, secret_env)
    if environ.get(AUTH_MODE, "").lower() == "disabled":
        warning = (
            "RAY_AUTH_MODE=disabled: anyone who reaches the cluster's Ray ports can run code on it "
            "(unset it and share the cluster's token instead)"
        )
        return RayAccess(set_env={}, unset_env=unset, warnings=(warning,))
    if not environ.get(TOKEN):
        token_file = token_file_for(environ, home)
        if not token_file.is_file():
            raise RayAccessError(f"Ray token authentication is on but {token_file} does not exist: {CLUSTER_TOKEN_FIX}")
        mode = token_file.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise RayAccessError(
                f"the Ray token {token_file} can be read by other users (mode {stat.filemode(mode)}): "
                f"chmod 600 {token_file}"
            )
    return RayAccess(set_env={AUTH_MODE: "token"}, unset_env=unset)


def token_file_for(environ: Mapping[str, str], home: Path | None = None) -> Path:
    """Where Ray reads its token from when ``RAY_AUTH_TOKEN`` is unset: ``RAY_AUTH_TOKEN_PATH`` or ~/.ray/auth_token."""
    if environ.get(TOKEN_PATH):
        return Path(environ[TOKEN_PATH]).expanduser()
    return (home or Path.home()) / DEFAULT_TOKEN_FILE


def refresh_ray_config(loopback_only: bool) -> None:
    """Make an already imported Ray see the environment just set (it caches both at import or first use).

    Ray reads ``RAY_AUTH_MODE`` into its C++ config once and the single-machine switch into a Python constant at
    import; ``orchestrator up`` imports Ray after ``RayAccess.apply``, but tests and embedding programs may not.
    """
    from ray._private import ray_constants
    from ray._raylet import Config

    Config.initialize("")
    if loopback_only:
        ray_constants.ENABLE_RAY_CLUSTER = False


def _present(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(name for name in names if name and name in environ)
