"""Joining a Ray cluster at ``--address HOST:PORT``: checks that fail in seconds with one line instead
of Ray's minutes of silent retries, and the token that Ray 2.60's authentication asks for.

* ``probe_gcs``: something must answer the gRPC (HTTP/2) handshake at HOST:PORT, as a Ray head's GCS
  does. A port with nothing behind it, or with some other server (HTTP/1, SSH, a database), fails here.
* ``find_token`` / ``use_token``: a head started with a plain ``ray start --head`` turns token
  authentication on and writes the token to ``~/.ray/auth_token``; a driver uses a token only when
  ``RAY_AUTH_MODE=token`` is set. So when a token is found (``RAY_AUTH_TOKEN``, the file
  ``RAY_AUTH_TOKEN_PATH`` names, or ``~/.ray/auth_token``) the driver sets that mode for its session.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Mapping

from ..errors import UsageError

TOKEN_VARIABLE = "RAY_AUTH_TOKEN"
TOKEN_PATH_VARIABLE = "RAY_AUTH_TOKEN_PATH"
MODE_VARIABLE = "RAY_AUTH_MODE"
DEFAULT_TOKEN_FILE = Path("~/.ray/auth_token")


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--address takes HOST:PORT (the head's GCS port, 6379 by default), got {address!r}")
    return host.strip("[]"), int(port)


def probe_gcs(address: str, timeout: float = 5.0) -> str:
    """A one-line UsageError within ``timeout`` seconds unless a gRPC server (a Ray head's GCS) answers at
    ``address``; returns the host."""
    import socket

    host, port = split_address(address)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc})") from None
    import grpc

    channel = grpc.insecure_channel(f"{host}:{port}")
    try:  # READY only after the HTTP/2 handshake: another kind of server never gets there
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise UsageError(f"--address {address}: a server answers there but it is not a Ray head (no gRPC "
                         f"handshake in {timeout:g} s); give the head's GCS port (6379 by default)") from None
    finally:
        channel.close()
    return host


def find_token(environ: Mapping[str, str] | None = None, home: Path | None = None) -> str | None:
    """Where a Ray auth token is, in Ray's own order: ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH``
    names, ``~/.ray/auth_token``; None when there is none. A ``RAY_AUTH_TOKEN_PATH`` that names no
    readable, non-empty file is a UsageError naming it (Ray would fail later, less clearly)."""
    environ = os.environ if environ is None else environ
    if environ.get(TOKEN_VARIABLE, "").strip():
        return TOKEN_VARIABLE
    named = environ.get(TOKEN_PATH_VARIABLE, "").strip()
    if named:
        if not _token_in(Path(named).expanduser()):
            raise UsageError(f"{TOKEN_PATH_VARIABLE}={named}: no token there (a readable file holding it)")
        return f"{TOKEN_PATH_VARIABLE} ({named})"
    default = (home / ".ray" / "auth_token") if home else DEFAULT_TOKEN_FILE.expanduser()
    return str(default) if _token_in(default) else None


def _token_in(path: Path) -> bool:
    try:
        return path.is_file() and bool(path.read_text().strip())
    except (OSError, UnicodeDecodeError):
        return False


@contextlib.contextmanager
def use_token() -> Iterator[str | None]:
    """While joining a cluster: ``RAY_AUTH_MODE=token`` for this driver when a token is found and no mode
    is set; yields where the token is (or None). The environment is restored afterwards."""
    source = find_token()
    saved = os.environ.get(MODE_VARIABLE)
    if source and saved is None:
        os.environ[MODE_VARIABLE] = "token"
        _forget_cached_token()
    try:
        yield source
    finally:
        if source and saved is None:
            os.environ.pop(MODE_VARIABLE, None)
            _forget_cached_token()


def _forget_cached_token() -> None:
    from .cluster import _forget_token

    _forget_token()


def join_failure(address: str, exc: BaseException, token: str | None) -> UsageError:
    """The one line for a failed ``ray.init(address=...)``: the token variables when the head asks for
    a token this driver does not have, else Ray's first line."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if type(exc).__name__ == "AuthenticationError" or any(w in str(exc).lower() for w in ("token", "unauthenticated")):
        if token is None:
            return UsageError(f"--address {address}: the Ray cluster requires an auth token and none was found: "
                              f"set {TOKEN_VARIABLE} or {TOKEN_PATH_VARIABLE} (the head's machine has it in "
                              f"~/.ray/auth_token)")
        return UsageError(f"--address {address}: the Ray cluster refused the token from {token} ({text[:200]})")
    return UsageError(f"--address {address}: cannot join a Ray cluster there ({text[:300]})")


__all__ = ["find_token", "join_failure", "probe_gcs", "split_address", "use_token"]
