# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The command agent of a build container: a few lines of POSIX sh that run as the container's main process and
run each command the connection (``bakery.images.docker_api``) sends them, instead of a ``docker exec`` each.

A ``docker exec`` is three API calls (create, start with a hijacked stream, inspect for the exit code): 30-70 ms
a command on a 2-core machine. A new attach to the container's main process, one call, answers in 2-3 ms. An
attach outlives no worker process, and needs none to: the agent is the container's entrypoint, so every one of
Ansible's per-task workers reaches the same agent with an attach of its own.

The protocol, over the attach stream (the container's stdin in, its stdout and stderr out, Docker's 8-byte frame
headers around each piece of output):

* ``NONCE ?`` (a line): a ping. The agent answers ``NONCE ok`` on stdout and on stderr when it is idle and has
  the tools it needs (``cat``, ``rm``, and a ``head -c`` that reads no byte past its count from a pipe: GNU
  coreutils', not busybox's, which reads ahead), ``NONCE no`` when it lacks them. Everything before the answer
  on either stream is somebody else's (a command whose client is gone) and is dropped. No answer in a moment
  means the agent is busy with such a command: the client uses ``docker exec`` instead, and its queued ping
  does no harm when the agent reaches it.
* ``NONCE CLEN ILEN EXECUTABLE`` (a line), then the command (``CLEN`` bytes) and its input (``ILEN`` bytes).
  The agent keeps the input in a file, runs ``EXECUTABLE -c COMMAND`` with that file as its stdin and its
  output and error output into two more files (all three unlinked as soon as they are open, in ``/dev/shm``,
  Docker's tmpfs, so that nothing reaches the image), then sends the error output and ``\\nNONCE\\n`` on
  stderr and the output and ``\\nNONCE RC\\n`` on stdout.

Output through files, not the agent's own stdout: a process a command leaves in the background (a daemon that
keeps its stdout) writes into a file nobody reads again, never into a later command's answer; and a command's
stdin is exactly its input, so a command that stops reading early cannot leave bytes for the next header.

The client holds a lock per container (an abstract unix socket, gone with its process) while it talks to the
agent; a second client at the same moment (a task delegated to this builder from another host's) uses
``docker exec``.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import time
from collections.abc import Mapping
from urllib.parse import quote

# The agent. ``command exec``: a failed redirection of a plain ``exec`` would end a non-interactive shell, and
# the container with it. ``cmd=$(...; printf .)``: command substitution drops trailing newlines, the dot keeps
# them. A failure to keep the input still consumes it (a second ``head``), so the next header stays in step.
AGENT_SCRIPT = r"""trap 'exit 0' TERM INT
d=/dev/shm
{ [ -d "$d" ] && [ -w "$d" ]; } || d=/tmp
s=ok
for t in head cat rm; do command -v "$t" >/dev/null 2>&1 || s=no; done
[ "$s" = ok ] && [ "$(printf ab | { head -c 1 >/dev/null; cat; })" = b ] || s=no
while IFS=' ' read -r n c i x; do
  if [ "$c" = '?' ]; then printf '%s %s\n' "$n" "$s"; printf '%s %s\n' "$n" "$s" >&2; continue; fi
  f=$d/.bakery-agent-$n
  cmd=$(head -c "$c"; printf .)
  cmd=${cmd%.}
  if { head -c "$i" >"$f.i"; } 2>/dev/null; then
    if { : >"$f.o" && : >"$f.e" && command exec 3<"$f.i" 4>"$f.o" 5>"$f.e" 6<"$f.o" 7<"$f.e"; } 2>/dev/null; then
      rm -f "$f.i" "$f.o" "$f.e"
      "$x" -c "$cmd" <&3 >&4 2>&5 3<&- 4>&- 5>&- 6<&- 7<&-
      r=$?
      cat <&7 >&2
      cat <&6
      exec 3<&- 4>&- 5>&- 6<&- 7<&-
    else
      rm -f "$f.i" "$f.o" "$f.e"
      printf 'bakery agent: cannot keep the output of a command in %s\n' "$d" >&2
      r=125
    fi
  else
    head -c "$i" >/dev/null
    rm -f "$f.i"
    printf 'bakery agent: cannot keep the input of a command in %s\n' "$d" >&2
    r=125
  fi
  printf '\n%s\n' "$n" >&2
  printf '\n%s %s\n' "$n" "$r"
done
"""

ENTRYPOINT = ["/bin/sh", "-c", AGENT_SCRIPT]

# How long an idle agent may take to answer a ping (its answer is two shell builtins; under load, a few ms).
PING_SECONDS = 2.0

_HEADER_END = b"\r\n\r\n"
_FRAME = struct.Struct(">BxxxL")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class AgentUnavailable(Exception):
    """The agent was not asked to run the command (busy, absent, unreachable): ``docker exec`` can run it."""


class AgentLost(Exception):
    """The command was sent and its answer did not come back whole: it may have run, so nothing may run it again."""


def new_nonce() -> bytes:
    return os.urandom(8).hex().encode()


def ping(nonce: bytes) -> bytes:
    return b"%s ?\n" % nonce


def request(nonce: bytes, command: bytes, data: bytes, executable: str) -> bytes:
    """The bytes that ask the agent to run ``executable -c command`` with ``data`` as its stdin."""
    if not executable or any(ch.isspace() for ch in executable):
        raise AgentUnavailable("the executable %r cannot be named to the agent" % executable)
    return b"%s %d %d %s\n" % (nonce, len(command), len(data), executable.encode()) + command + data


def with_environment(command: bytes, env: Mapping[str, str] | None) -> bytes:
    """``command`` run with the variables ``env`` exported, as ``docker exec``'s Env gives them to its process."""
    if not env:
        return command
    lines = []
    for name, value in env.items():
        if not isinstance(name, str) or not _NAME.match(name) or not isinstance(value, str):
            raise AgentUnavailable("the variable %r cannot be given through the agent" % (name,))
        lines.append("export %s='%s'" % (name, value.replace("'", "'\"'\"'")))
    return ("\n".join(lines) + "\n").encode() + command


class Demux:
    """Docker's multiplexed attach stream (no TTY), split into stdout and stderr as it arrives."""

    def __init__(self) -> None:
        self.pending = b""
        self.out = b""
        self.err = b""

    def feed(self, data: bytes) -> None:
        self.pending += data
        while len(self.pending) >= _FRAME.size:
            kind, size = _FRAME.unpack_from(self.pending)
            if len(self.pending) < _FRAME.size + size:
                return
            body = self.pending[_FRAME.size : _FRAME.size + size]
            self.pending = self.pending[_FRAME.size + size :]
            if kind == 2:
                self.err += body
            else:
                self.out += body


def after_line(buffer: bytes, line: bytes) -> bytes | None:
    """What follows ``line`` (a whole line of ``buffer``), or None while it has not come."""
    at = buffer.find(line)
    while at >= 0:
        if at == 0 or buffer[at - 1 : at] == b"\n":
            return buffer[at + len(line) :]
        at = buffer.find(line, at + 1)
    return None


def answer(demux: Demux, nonce: bytes) -> tuple[int, bytes, bytes] | None:
    """The command's exit code, output and error output once both its end markers have come, else None."""
    err_end = b"\n" + nonce + b"\n"
    if not demux.err.endswith(err_end):
        return None
    marker = b"\n" + nonce + b" "
    at = demux.out.rfind(marker)
    if at < 0 or not demux.out.endswith(b"\n"):
        return None
    code = demux.out[at + len(marker) : -1]
    if not code.isdigit():
        return None
    return int(code), demux.out[:at], demux.err[: -len(err_end)]


def attach(socket_path: str, api_version: str, container: str, timeout: float) -> tuple[socket.socket, bytes]:
    """A hijacked attach stream (stdin, stdout, stderr) to ``container``'s main process, and what came after
    the response's headers. Written here, not with the Docker SDK's attach: the stream must begin right after the
    headers, and http.client's buffered reader can hold its first frames where a raw socket read never sees them."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        path = "/v%s/containers/%s/attach?stream=1&stdin=1&stdout=1&stderr=1" % (
            api_version,
            quote(container, safe=""),
        )
        sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: docker\r\nContent-Length: 0\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
            % path.encode()
        )
        received = b""
        while _HEADER_END not in received:
            chunk = sock.recv(4096)
            if not chunk:
                raise AgentUnavailable("the engine closed the attach before its answer")
            received += chunk
            if len(received) > 65536:
                raise AgentUnavailable("the engine's answer to the attach has no end")
        head, rest = received.split(_HEADER_END, 1)
        status = head.split(b"\r\n", 1)[0].split()
        if len(status) < 2 or status[1] not in (b"101", b"200"):
            raise AgentUnavailable("the engine answered the attach with %r" % head.split(b"\r\n", 1)[0])
    except (OSError, AgentUnavailable) as exc:
        sock.close()
        raise AgentUnavailable(str(exc)) from exc
    return sock, rest


def _read(sock: socket.socket, demux: Demux, deadline: float | None) -> None:
    """Feed ``demux`` with what the stream has now, waiting for it until ``deadline`` (None: as long as it takes).
    A socket timeout, not select(): select() fails on a descriptor above 1023, which a busy worker can have."""
    sock.settimeout(None if deadline is None else max(0.001, deadline - time.monotonic()))
    chunk = sock.recv(1 << 16)
    if not chunk:
        raise EOFError
    demux.feed(chunk)


def run(
    sock: socket.socket,
    first: bytes,
    command: bytes,
    data: bytes,
    executable: str,
    ping_seconds: float = PING_SECONDS,
) -> tuple[int, bytes, bytes]:
    """Run ``command`` through the agent behind ``sock`` (an attach: :func:`attach`, ``first`` what came with it).

    Raises :class:`AgentUnavailable` before the command is sent, :class:`AgentLost` after."""
    nonce = new_nonce()
    message = request(nonce, command, data, executable)
    demux = Demux()
    demux.feed(first)
    try:
        sock.sendall(ping(nonce))
        deadline = time.monotonic() + ping_seconds
        ok, no = b"%s ok\n" % nonce, b"%s no\n" % nonce
        while True:
            if after_line(demux.out, no) is not None:
                raise AgentUnavailable(
                    "the container lacks cat, rm or a head -c that reads no further than asked"
                )
            out, err = after_line(demux.out, ok), after_line(demux.err, ok)
            if out is not None and err is not None:
                break
            _read(sock, demux, deadline)
    except TimeoutError as exc:
        raise AgentUnavailable(
            "the agent did not answer in %.1f s (busy with a command whose client went)" % ping_seconds
        ) from exc
    except (OSError, EOFError) as exc:
        raise AgentUnavailable("the attach ended before the agent answered: %s" % exc) from exc
    demux.out, demux.err = out, err
    try:
        sock.sendall(message)
        while True:
            result = answer(demux, nonce)
            if result is not None:
                return result
            _read(sock, demux, None)
    except EOFError as exc:
        raise AgentLost(
            "the container's main process ended before the command's answer (the container stopped?)"
        ) from exc
    except OSError as exc:
        raise AgentLost("the attach failed before the command's answer: %s" % exc) from exc


class ContainerLock:
    """One client at a time per agent: an abstract unix socket, released when its process ends however it ends."""

    def __init__(self, container: str) -> None:
        self.name = b"\0bakery-docker-agent-" + container.encode()[:80]
        self.sock: socket.socket | None = None

    def acquire(self) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.name)
        except OSError:
            sock.close()
            return False
        self.sock = sock
        return True

    def release(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
