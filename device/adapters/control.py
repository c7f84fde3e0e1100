"""The control socket: how `voice-device status|mute|wake|ask|volume` talk to the daemon.

A Unix stream socket, owner-only (0600, in a 0700 directory when we make it). The protocol is
one line of UTF-8 from the client — a verb and its argument, `mute on`, `ask what time is
it` — and one line of JSON back, `{"ok": true, ...}` or `{"ok": false, "error": "..."}`.
`ask` answers when the spoken reply is over (or failed), so a script can wait for it.
Try it by hand with: `echo status | socat - UNIX-CONNECT:/run/voice-device/control.sock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
SERVICE_DIR = Path("/run/voice-device")
"""The systemd unit's RuntimeDirectory."""
MAX_LINE = 4096

Reply = dict[str, Any]
Handler = Callable[[str, str], Awaitable[Reply]]


class ControlError(Exception):
    """The socket cannot be set up or reached; the message says why."""


def _user_dir() -> Path:
    """A directory only this user can have made: root's is /run/voice-device; a user's is in
    $XDG_RUNTIME_DIR, else (last resort) /tmp/voice-device-UID, checked before it is used."""
    if os.getuid() == 0:
        return SERVICE_DIR
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg:
        return Path(xdg) / "voice-device"
    return Path(f"/tmp/voice-device-{os.getuid()}")


def _trusted(path: Path) -> str | None:
    """Why the socket at `path` may belong to someone else (None: it is safe to talk to).

    /run/voice-device can only have been made by root or systemd. Anywhere else (/tmp above
    all), the directory and the socket must be this user's, and the directory private:
    another local user who made /tmp/voice-device-0 first must not read root's `ask` text
    or answer `status` for the daemon."""
    if path.parent == SERVICE_DIR:
        return None
    try:
        folder, sock = path.parent.lstat(), path.lstat()
    except OSError as e:
        return str(e.strerror or e)
    uid = os.getuid()
    if not stat.S_ISDIR(folder.st_mode) or folder.st_uid != uid or folder.st_mode & 0o077:
        return f"{path.parent} is not a private directory of this user"
    if not stat.S_ISSOCK(sock.st_mode) or sock.st_uid != uid:
        return f"{path} is not this user's socket"
    return None


def daemon_socket_path() -> Path:
    """Where the daemon listens: the service's RuntimeDirectory, else a per-user directory."""
    given = os.environ.get("RUNTIME_DIRECTORY", "")
    if given:
        return Path(given.split(":")[0]) / SOCKET_NAME
    return _user_dir() / SOCKET_NAME


def client_socket_paths() -> list[Path]:
    """Where a client looks, in order: the service's socket, then the user's own daemon's."""
    paths = [SERVICE_DIR / SOCKET_NAME, _user_dir() / SOCKET_NAME]
    given = os.environ.get("RUNTIME_DIRECTORY", "")
    if given:
        paths.insert(0, Path(given.split(":")[0]) / SOCKET_NAME)
    return paths


def _private_dir(directory: Path) -> None:
    """Make `directory` (0700) or check that an existing one is ours and private enough."""
    try:
        directory.mkdir(parents=True, mode=0o700)
        return
    except FileExistsError:
        pass
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise ControlError(f"{directory} is not a directory")
    if info.st_uid != os.getuid():
        raise ControlError(
            f"{directory} belongs to another user; give the daemon another place with "
            "--control-socket (or set XDG_RUNTIME_DIR)"
        )
    if info.st_mode & 0o022:
        raise ControlError(f"{directory} is writable by others")


class ControlServer:
    """Serves the control socket; each request line goes to `handler(verb, argument)`."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        _private_dir(self.path.parent)
        if self.path.exists() or self.path.is_symlink():
            if await _answers(self.path):
                raise ControlError(
                    f"another voice-device daemon is running (its control socket is {self.path})"
                )
            self.path.unlink()  # left behind by a daemon that did not stop cleanly
        # bind under a temporary name, restrict, then rename: never reachable by others
        tmp = self.path.with_name(f".{SOCKET_NAME}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(tmp))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
            sock.listen(8)
            sock.setblocking(False)
            self.server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE)
        except OSError as e:
            sock.close()
            raise ControlError(f"cannot listen on {self.path}: {e.strerror or e}") from e
        log.info("control socket %s", self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), 5)
            except (TimeoutError, ValueError, ConnectionError):
                return  # silent, too long, or gone
            text = line.decode("utf-8", "replace").strip()
            verb, _, argument = text.partition(" ")
            try:
                reply = await self.handler(verb.lower(), argument.strip())
            except Exception:  # a bug must not take the daemon down with it
                log.exception("control request %r failed", verb)
                reply = {"ok": False, "error": "internal error (see the daemon's log)"}
            writer.write(json.dumps(reply).encode() + b"\n")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            # (not wait_closed(): on 3.12+ it waits for clients, such as an `ask` in progress)
            self.server = None
        with contextlib.suppress(OSError):
            self.path.unlink()


async def _answers(path: Path) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def request(line: str, path: Path | None = None, timeout: float = 10.0) -> Reply:
    """Send one request to the daemon and return its reply (blocking; for the CLI)."""
    candidates = [path] if path is not None else client_socket_paths()
    errors = []
    for p in candidates:
        if not (p.exists() or p.is_symlink()):
            errors.append(f"{p}: no such socket")
            continue
        doubt = _trusted(p) if path is None else None
        if doubt is not None:
            errors.append(f"{p}: not used: {doubt}")
            continue
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(str(p))
                s.sendall(line.encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except PermissionError:
            raise ControlError(
                f"no permission to use {p}: run as the service's user or with sudo"
            ) from None
        except TimeoutError:
            raise ControlError(f"the daemon did not answer within {timeout:g} s") from None
        except OSError as e:
            errors.append(f"{p}: {e.strerror or e}")
            continue
        try:
            reply = json.loads(data)
        except ValueError:
            raise ControlError(f"unexpected reply from {p}: {data[:80]!r}") from None
        if not isinstance(reply, dict):
            raise ControlError(f"unexpected reply from {p}: {data[:80]!r}")
        return reply
    raise ControlError("no voice-device daemon is running (" + "; ".join(errors) + ")")
