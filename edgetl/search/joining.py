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
GCS_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"  # what every driver asks a head first


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--address takes HOST:PORT (the head's GCS port, 6379 by default), got {address!r}")
    return host.strip("[]"), int(port)


def probe_gcs(address: str, timeout: float = 5.0) -> tuple[str, bool]:
    """(host, whether the head asks for an auth token). A one-line UsageError within ``timeout`` seconds
    unless a Ray head's GCS answers at ``address``: nothing listening, a server that never completes a
    gRPC (HTTP/2) handshake, or a gRPC server without the GCS service."""
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
        channel.unary_unary(GCS_METHOD)(b"", timeout=timeout)  # an empty request is a valid protobuf
    except grpc.FutureTimeoutError:
        raise UsageError(f"--address {address}: a server answers there but it is not a Ray head (no gRPC "
                         f"handshake in {timeout:g} s); give the head's GCS port (6379 by default)") from None
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            return host, True
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise UsageError(f"--address {address}: a gRPC server answers there but not a Ray head's GCS; give "
                             f"the head's GCS port (6379 by default)") from None
    finally:
        channel.close()
    return host, False


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
    is set; yields where the token is (or None). Ray reads the mode when it is imported, so this runs
    before ``import ray``. The environment is restored afterwards."""
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
    import sys

    if "ray" in sys.modules:  # a token this process loaded before (tests run many searches in one process)
        from .cluster import _forget_token

        _forget_token()


def _token_value(source: str) -> str:
    if source == TOKEN_VARIABLE:
        return os.environ[TOKEN_VARIABLE].strip()
    path = os.environ[TOKEN_PATH_VARIABLE] if source.startswith(TOKEN_PATH_VARIABLE) else source
    return Path(path).expanduser().read_text().strip()


def check_token(address: str, token: str | None, timeout: float = 5.0) -> None:
    """The head asks for a token (``probe_gcs``): one line naming the variables when none was found, or
    naming where it came from when the head refuses it (Ray itself retries for 20 s, then says only
    "Failed to connect")."""
    if token is None:
        raise UsageError(f"--address {address}: the Ray cluster requires an auth token and none was found: set "
                         f"{TOKEN_VARIABLE} or {TOKEN_PATH_VARIABLE} (the head's machine has it in ~/.ray/auth_token)")
    if os.environ.get(MODE_VARIABLE, "token").lower() != "token":
        raise UsageError(f"--address {address}: the Ray cluster requires an auth token but {MODE_VARIABLE} is "
                         f"{os.environ[MODE_VARIABLE]!r} here; unset it or set it to token")
    import grpc

    host, port = split_address(address)
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            channel.unary_unary(GCS_METHOD)(b"", timeout=timeout,
                                            metadata=(("authorization", f"Bearer {_token_value(token)}"),))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise UsageError(f"--address {address}: the Ray cluster refused the auth token from {token}; "
                                 f"use the head's (its machine has it in ~/.ray/auth_token)") from None


def join_failure(address: str, exc: BaseException, token: str | None) -> UsageError:
    """The one line for a failed ``ray.init(address=...)``: the token's source when the head refused
    it, else Ray's first line."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if token and (type(exc).__name__ == "AuthenticationError"
                  or any(w in str(exc).lower() for w in ("token", "unauthenticated"))):
        return UsageError(f"--address {address}: the Ray cluster refused the token from {token} ({text[:200]})")
    return UsageError(f"--address {address}: cannot join a Ray cluster there ({text[:300]})")


__all__ = ["find_token", "join_failure", "probe_gcs", "check_token", "split_address", "use_token"]
