# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The build container's command agent: its script under the shells bases have (dash, busybox), and the client's
side of the protocol (frames, markers, ping, lock), against a stand-in engine on a socket pair."""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest

from ansible_collections.bakery.images.plugins.module_utils import _docker_agent as agent


class _Shell:
    """The agent script run by ``shell`` with pipes for stdio: what the container's main process is, minus Docker."""

    def __init__(self, shell: list[str], path: str | None = None) -> None:
        env = {"PATH": path or os.environ["PATH"]}
        self.proc = subprocess.Popen(
            [*shell, "-c", agent.AGENT_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )

    def _read_until(self, done_out, done_err, seconds: float = 10.0) -> tuple[bytes, bytes]:
        out = err = b""
        deadline = time.monotonic() + seconds
        while not (done_out(out) and done_err(err)):
            ready = select.select([self.proc.stdout, self.proc.stderr], [], [], deadline - time.monotonic())[
                0
            ]
            assert ready, "the agent did not answer: out=%r err=%r" % (out, err)
            for stream in ready:
                chunk = os.read(stream.fileno(), 65536)
                if stream is self.proc.stdout:
                    out += chunk
                else:
                    err += chunk
        return out, err

    def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def ping(self) -> bytes:
        nonce = agent.new_nonce()
        self.send(agent.ping(nonce))
        out, err = self._read_until(lambda o: o.endswith(b"\n"), lambda e: e.endswith(b"\n"))
        assert out == err
        return out[len(nonce) + 1 : -1]

    def call(
        self, command: bytes, data: bytes = b"", executable: str = "/bin/sh"
    ) -> tuple[int, bytes, bytes]:
        assert self.ping() == b"ok"
        nonce = agent.new_nonce()
        self.send(agent.request(nonce, command, data, executable))
        demux = agent.Demux()
        demux.out, demux.err = self._read_until(
            lambda o: b"\n" + nonce + b" " in o and o.endswith(b"\n"),
            lambda e: e.endswith(b"\n" + nonce + b"\n"),
        )
        result = agent.answer(demux, nonce)
        assert result is not None
        return result

    def close(self) -> int:
        self.proc.stdin.close()
        return self.proc.wait(10)


@pytest.fixture
def dash():
    shell = _Shell(["/bin/sh"])
    yield shell
    assert shell.close() == 0


def test_a_command_gets_exactly_its_input_and_answers_its_code_output_and_error_output_apart(dash):
    blob = os.urandom(300_000) + b"\n\x00end"
    code, out, err = dash.call(b"sha256sum | cut -c1-64; echo oops >&2; exit 3", blob)
    assert (code, out, err) == (3, hashlib.sha256(blob).hexdigest().encode() + b"\n", b"oops\n")


def test_output_comes_back_byte_for_byte(dash):
    assert dash.call(b"printf 'no newline'") == (0, b"no newline", b"")
    assert dash.call(b"printf 'a\\n\\n\\n'; printf 'b\\n\\n' >&2") == (0, b"a\n\n\n", b"b\n\n")
    assert dash.call(b"printf '\\000\\001'") == (0, b"\x00\x01", b"")
    # a command with trailing newlines of its own runs as sent
    assert dash.call(b'echo "x\n\n"') == (0, b"x\n\n\n", b"")


def test_a_command_that_reads_part_of_its_input_leaves_the_next_one_in_step(dash):
    assert dash.call(b"head -c 2", b"abcdef" * 1000) == (0, b"ab", b"")
    assert dash.call(b"exit 0", b"unread") == (0, b"", b"")
    assert dash.call(b"cat", b"next") == (0, b"next", b"")
    # no input: stdin is empty, not the agent's own
    assert dash.call(b"wc -c") == (0, b"0\n", b"")


def test_the_agents_variables_and_descriptors_are_not_the_commands(dash):
    code, out, _err = dash.call(b'echo "[$n$c$i$x$f$d$s$r$cmd]"; ls /proc/self/fd')
    assert code == 0
    lines = out.decode().split()
    assert lines[0] == "[]"
    # stdin, stdout, stderr and ls's own directory: none of the agent's
    assert sorted(lines[1:]) == ["0", "1", "2", "3"]


def test_a_background_process_writes_into_no_later_answer(dash):
    assert dash.call(b"(sleep 0.3; echo LATE; echo LATE >&2) & echo now") == (0, b"now\n", b"")
    time.sleep(0.5)
    assert dash.call(b"echo next") == (0, b"next\n", b"")


def test_nothing_is_left_in_dev_shm(dash):
    before = set(os.listdir("/dev/shm"))
    dash.call(b"cat", b"input")
    assert not {name for name in os.listdir("/dev/shm") if name.startswith(".bakery-agent-")} - before


def test_the_variables_of_extra_env_reach_the_command_quoted(dash):
    command = agent.with_environment(b'echo "$A|$B"; env | grep -c "^B="', {"A": "it's", "B": "$(id) `x` \\"})
    assert dash.call(command) == (0, b"it's|$(id) `x` \\\n1\n", b"")
    assert agent.with_environment(b"true", None) == b"true"
    with pytest.raises(agent.AgentUnavailable):
        agent.with_environment(b"true", {"NOT-A-NAME": "x"})
    with pytest.raises(agent.AgentUnavailable):
        agent.with_environment(b"true", {"N": 1})


def test_another_executable_runs_the_command(dash):
    assert dash.call(b"echo $0", executable="/bin/bash") == (0, b"/bin/bash\n", b"")
    with pytest.raises(agent.AgentUnavailable):
        agent.request(b"n", b"true", b"", "/bin/my shell")


def test_a_missing_executable_is_an_exit_code_and_the_agent_goes_on(dash):
    code, out, err = dash.call(b"true", executable="/nonexistent/sh")
    assert code == 127 and out == b"" and b"/nonexistent/sh" in err
    assert dash.call(b"echo on") == (0, b"on\n", b"")


def test_busyboxs_head_reads_ahead_so_its_agent_declines(tmp_path):
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox is missing: the Makefile installs busybox-static")
    for tool in ("head", "cat", "rm", "printf"):
        (tmp_path / tool).symlink_to(busybox)
    shell = _Shell([busybox, "sh"], path=str(tmp_path))
    try:
        assert shell.ping() == b"no"
    finally:
        assert shell.close() == 0


def test_a_shell_without_head_declines(tmp_path):
    for tool in ("cat", "rm"):
        (tmp_path / tool).symlink_to(shutil.which(tool))
    shell = _Shell(["/bin/sh"], path=str(tmp_path))
    try:
        assert shell.ping() == b"no"
    finally:
        assert shell.close() == 0


def test_term_ends_the_agent_at_once():
    shell = _Shell(["/bin/sh"])
    assert shell.ping() == b"ok"
    shell.proc.terminate()
    assert shell.proc.wait(5) == 0


# the client's side, against a stand-in engine: frames as Docker's attach sends them


def _frame(kind: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", kind, len(data)) + data


def test_demux_splits_frames_whatever_their_pieces():
    stream = _frame(1, b"out1") + _frame(2, b"err") + _frame(1, b"out2")
    for size in (1, 3, 9, len(stream)):
        demux = agent.Demux()
        for at in range(0, len(stream), size):
            demux.feed(stream[at : at + size])
        assert (demux.out, demux.err, demux.pending) == (b"out1out2", b"err", b"")


def test_an_answer_needs_both_markers_and_a_whole_code():
    demux = agent.Demux()
    demux.out, demux.err = b"data\nN 0", b"e\nN\n"
    assert agent.answer(demux, b"N") is None
    demux.out = b"data\nN 12\n"
    assert agent.answer(demux, b"N") == (12, b"data", b"e")
    demux.err = b"e\nN"
    assert agent.answer(demux, b"N") is None
    # output that looks like a marker of another nonce is output
    demux.out, demux.err = b"\nM 3\n\nN 0\n", b"\nN\n"
    assert agent.answer(demux, b"N") == (0, b"\nM 3\n", b"")


def test_after_line_finds_whole_lines_only():
    assert agent.after_line(b"xN ok\nN ok\nrest", b"N ok\n") == b"rest"
    assert agent.after_line(b"N ok\n", b"N ok\n") == b""
    assert agent.after_line(b"xN ok\n", b"N ok\n") is None


class _Engine:
    """The container side of an attach: reads requests, answers with frames as ``behave`` says."""

    def __init__(self, behave) -> None:
        self.client, self.server = socket.socketpair()
        self.received = b""
        self.behave = behave
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            while True:
                chunk = self.server.recv(65536)
                if not chunk:
                    return
                self.received += chunk
                if self.behave(self, chunk) is False:
                    self.server.close()
                    return
        except OSError:
            return

    def send(self, data: bytes) -> None:
        self.server.sendall(data)

    def close(self) -> None:
        self.client.close()
        self.thread.join(5)
        self.server.close()


def _answering(stale: bytes = b""):
    def behave(engine: _Engine, chunk: bytes) -> None:
        nonce = chunk.split(b" ", 1)[0]
        if chunk.endswith(b" ?\n"):
            engine.send(_frame(1, stale + nonce + b" ok\n") + _frame(2, stale + nonce + b" ok\n"))
        else:
            engine.send(_frame(2, b"warn\n\n" + nonce + b"\n") + _frame(1, b"{}\n" + nonce + b" 0\n"))

    return behave


def test_run_drops_what_came_before_its_pong_and_returns_the_answer():
    engine = _Engine(_answering(stale=b"output of a command whose client went\nX 0\n"))
    try:
        assert agent.run(engine.client, b"", b"true", b"in", "/bin/sh") == (0, b"{}", b"warn\n")
        header = engine.received.split(b"\n")[1]
        assert header.split(b" ")[1:] == [b"4", b"2", b"/bin/sh"]
        assert engine.received.endswith(b"truein")
    finally:
        engine.close()


def test_a_busy_agent_is_unavailable_and_is_sent_nothing_but_the_ping():
    engine = _Engine(lambda engine, chunk: None)
    try:
        started = time.monotonic()
        with pytest.raises(agent.AgentUnavailable, match="did not answer"):
            agent.run(engine.client, b"", b"rm -rf /important", b"", "/bin/sh", ping_seconds=0.2)
        assert time.monotonic() - started < 2
        time.sleep(0.1)
        assert engine.received.endswith(b" ?\n") and b"important" not in engine.received
    finally:
        engine.close()


def test_an_agent_that_declines_is_unavailable():
    def behave(engine: _Engine, chunk: bytes) -> None:
        engine.send(_frame(1, chunk.split(b" ", 1)[0] + b" no\n"))

    engine = _Engine(behave)
    try:
        with pytest.raises(agent.AgentUnavailable, match="head -c"):
            agent.run(engine.client, b"", b"true", b"", "/bin/sh")
    finally:
        engine.close()


def test_a_stream_that_ends_after_the_command_went_is_lost_not_unavailable():
    def behave(engine: _Engine, chunk: bytes):
        if chunk.endswith(b" ?\n"):
            return _answering()(engine, chunk)
        return False

    engine = _Engine(behave)
    try:
        with pytest.raises(agent.AgentLost):
            agent.run(engine.client, b"", b"true", b"", "/bin/sh")
    finally:
        engine.close()


def test_one_client_at_a_time_per_container():
    first, second, other = (
        agent.ContainerLock("bakery-x-web"),
        agent.ContainerLock("bakery-x-web"),
        agent.ContainerLock("bakery-x-db"),
    )
    assert first.acquire()
    try:
        assert not second.acquire()
        assert other.acquire()
        other.release()
    finally:
        first.release()
    assert second.acquire()
    second.release()


def test_attach_speaks_http_and_keeps_what_came_with_the_headers(tmp_path):
    path = str(tmp_path / "engine.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    seen: list[bytes] = []

    def serve(status: bytes) -> None:
        conn = listener.accept()[0]
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        seen.append(request)
        conn.sendall(
            status + b"\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n" + _frame(1, b"early")
        )
        time.sleep(0.2)
        conn.close()

    try:
        thread = threading.Thread(target=serve, args=(b"HTTP/1.1 101 UPGRADED",))
        thread.start()
        sock, first = agent.attach(path, "1.43", "bakery-x/web", 2)
        sock.close()
        thread.join()
        assert first == _frame(1, b"early")
        assert seen[0].startswith(
            b"POST /v1.43/containers/bakery-x%2Fweb/attach?stream=1&stdin=1&stdout=1&stderr=1 HTTP/1.1\r\n"
        )
        assert b"Upgrade: tcp" in seen[0]
        thread = threading.Thread(target=serve, args=(b"HTTP/1.1 404 Not Found",))
        thread.start()
        with pytest.raises(agent.AgentUnavailable, match="404"):
            agent.attach(path, "1.43", "gone", 2)
        thread.join()
    finally:
        listener.close()
    with pytest.raises(agent.AgentUnavailable):
        agent.attach(str(tmp_path / "no-engine.sock"), "1.43", "c", 2)
