"""The environment Ray is started or joined with: token auth, loopback binding, no API key in any child."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.serving.ray_access import RayAccessError, cluster_access, embedded_access


def test_embedded_ray_gets_a_fresh_token_loopback_binding_and_no_api_key() -> None:
    environ = {"EMBED_API_KEY": "sk-secret", "PATH": "/usr/bin"}
    access = embedded_access(environ, ("EMBED_API_KEY",))
    access.apply(environ)
    assert environ["RAY_AUTH_MODE"] == "token"
    assert environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert len(environ["RAY_AUTH_TOKEN"]) == 64 and int(environ["RAY_AUTH_TOKEN"], 16) >= 0
    assert "EMBED_API_KEY" not in environ and environ["PATH"] == "/usr/bin"
    assert access.warnings == ()
    other = embedded_access({}, ()).set_env["RAY_AUTH_TOKEN"]
    assert other != environ["RAY_AUTH_TOKEN"]  # one per process, never a constant


def test_embedded_ray_keeps_the_operators_token_and_overrides_disabled_auth() -> None:
    environ = {"RAY_AUTH_TOKEN": "mine", "RAY_AUTH_MODE": "disabled"}
    access = embedded_access(environ)
    access.apply(environ)
    assert environ["RAY_AUTH_TOKEN"] == "mine" and environ["RAY_AUTH_MODE"] == "token"
    assert "always requires its token" in access.warnings[0]


def test_joining_a_cluster_needs_its_token(tmp_path: Path) -> None:
    with pytest.raises(RayAccessError, match=r"auth_token does not exist: on the head run `ray get-auth-token"):
        cluster_access({}, home=tmp_path)
    environ = {"RAY_AUTH_TOKEN": "shared", "EMBED_API_KEY": "sk"}
    access = cluster_access(environ, ("EMBED_API_KEY",), home=tmp_path)
    access.apply(environ)
    assert environ == {"RAY_AUTH_TOKEN": "shared", "RAY_AUTH_MODE": "token"}
    # Joining never switches Ray to single-machine mode: the node must be reachable by the others.
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in access.set_env


def test_a_token_file_that_other_users_can_read_is_refused(tmp_path: Path) -> None:
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("abc")
    token.chmod(0o640)
    with pytest.raises(RayAccessError, match=r"can be read by other users \(mode -rw-r-----\): chmod 600"):
        cluster_access({}, home=tmp_path)
    token.chmod(0o600)
    assert cluster_access({}, home=tmp_path).set_env == {"RAY_AUTH_MODE": "token"}
    elsewhere = tmp_path / "token"
    elsewhere.write_text("abc")
    elsewhere.chmod(0o600)
    assert cluster_access({"RAY_AUTH_TOKEN_PATH": str(elsewhere)}, home=tmp_path / "nowhere").warnings == ()


def test_an_explicitly_unauthenticated_cluster_is_joined_with_a_warning(tmp_path: Path) -> None:
    access = cluster_access({"RAY_AUTH_MODE": "disabled", "EMBED_API_KEY": "sk"}, ("EMBED_API_KEY",), home=tmp_path)
    assert access.set_env == {} and access.unset_env == ("EMBED_API_KEY",)
    assert "anyone who reaches the cluster's Ray ports can run code on it" in access.warnings[0]
