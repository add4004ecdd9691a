# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""community.docker.docker_api for build containers, with a file upload that survives a busy engine."""

from __future__ import annotations

DOCUMENTATION = r"""
name: docker_api
short_description: Run tasks in a build container over the Docker API, robust on a busy engine
version_added: 0.1.0
description:
  - The connection bakery gives the builders and verifiers of docker targets. It is
    P(community.docker.docker_api#connection), with the same options and behaviour, and two differences.
  - In a container whose main process is bakery's command agent (a build container of role
    R(bakery.images.docker,ansible_collections.bakery.images.docker_role), which sets O(agent)), a command runs
    through the agent, reached with one attach to the container (5-10 ms a command), instead of a C(docker exec)
    (three API calls, 30-70 ms). The command sees what it would see under C(docker exec) (the same user, environment,
    working directory, stdin, exit code, output and error output). A command for another user, with
    privileges, a working directory or a become password, a command while another runs (a task delegated to
    this container from another host's), a container whose C(head) reads ahead (busybox's) and an engine not
    reached over a unix socket use C(docker exec), as does every command while the agent is busy with one whose
    task has gone (one that hit its task C(timeout), say).
  - One difference is visible, and only to a command that leaves a process in the background with its output
    (C(ansible.builtin.raw), whose command is the connection's, as in C(sleep 5 & echo started)). The task ends
    when the command ends, with the output written until then. Through C(docker exec) it waits for that
    process's end as well, and gets what it writes meanwhile; what it writes later reaches no other task either
    way.
  - Before its first file upload, P(community.docker.docker_api#connection) runs C(id -u && id -g) in the
    container to learn the owner of the files it writes. On an engine busy with other work (commits,
    imports, other bakes), that command has been seen to return no output at all, and the connection then
    fails the host as unreachable. This connection runs it again, up to O(id_attempts) times in all,
    pausing a little longer each time, and only then fails, naming the command's exit code and error output.
author:
  - bakery maintainers (@bakery-images)
extends_documentation_fragment:
  - community.docker.docker.api_documentation
  - community.docker.docker.var_names
options:
  # the options of community.docker.docker_api (4.x), declared again: ansible-core reads a connection's options
  # from its own DOCUMENTATION only
  remote_user:
    type: str
    description:
      - The user to execute as inside the container.
    vars:
      - name: ansible_user
      - name: ansible_docker_user
    ini:
      - section: defaults
        key: remote_user
    env:
      - name: ANSIBLE_REMOTE_USER
    cli:
      - name: user
    keyword:
      - name: remote_user
  remote_addr:
    type: str
    description:
      - The name of the container you want to access.
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
      - name: ansible_docker_host
  container_timeout:
    default: 10
    description:
      - Controls how long we can wait to access reading output from the container once execution started.
    env:
      - name: ANSIBLE_TIMEOUT
      - name: ANSIBLE_DOCKER_TIMEOUT
    ini:
      - key: timeout
        section: defaults
      - key: timeout
        section: docker_connection
    vars:
      - name: ansible_docker_timeout
    cli:
      - name: timeout
    type: integer
  extra_env:
    description:
      - Provide extra environment variables to set when running commands in the Docker container.
    vars:
      - name: ansible_docker_extra_env
    type: dict
  working_dir:
    description:
      - The directory inside the container to run commands in.
    env:
      - name: ANSIBLE_DOCKER_WORKING_DIR
    ini:
      - key: working_dir
        section: docker_connection
    vars:
      - name: ansible_docker_working_dir
    type: string
  privileged:
    description:
      - Whether commands should be run with extended privileges.
    env:
      - name: ANSIBLE_DOCKER_PRIVILEGED
    ini:
      - key: privileged
        section: docker_connection
    vars:
      - name: ansible_docker_privileged
    type: boolean
    default: false
  agent:
    description:
      - Whether the container's main process is bakery's command agent, to run commands through it instead of
        with C(docker exec). Role R(bakery.images.docker,ansible_collections.bakery.images.docker_role) sets it
        for its build containers; set it for no other container (its main process would read the agent's
        requests on its stdin).
    vars:
      - name: bakery_docker_agent
    type: boolean
    default: false
  id_attempts:
    description:
      - How many times the connection runs C(id -u && id -g) in the container before its first file upload
        when the command returns no usable answer.
    vars:
      - name: bakery_docker_id_attempts
    type: integer
    default: 4
"""

import sys
import time

from ansible.errors import AnsibleConnectionFailure
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.utils.display import Display
from ansible_collections.community.docker.plugins.connection.docker_api import (
    Connection as DockerApiConnection,
)
from ansible_collections.community.docker.plugins.module_utils._api.transport.unixconn import UnixHTTPAdapter

from ansible_collections.bakery.images.plugins.module_utils import _docker_agent

display = Display()


class Connection(DockerApiConnection):
    """community.docker.docker_api whose look-up of the container user's ids is retried."""

    transport = "bakery.images.docker_api"

    def _learn_ids(self) -> None:
        """Run ``id -u && id -g`` until it answers two numbers, and keep them where put_file looks for them."""
        attempts = max(1, int(self.get_option("id_attempts")))
        answer: tuple[int, bytes, bytes] = (0, b"", b"")
        for attempt in range(attempts):
            answer = self.exec_command(b"id -u && id -g")
            lines = answer[1].split()
            if len(lines) == 2 and all(line.isdigit() for line in lines):
                self.ids[self.actual_user] = int(lines[0]), int(lines[1])
                return
            display.vvv(
                "id -u && id -g answered %r (exit code %s); asking again" % (answer[1], answer[0]),
                host=self.get_option("remote_addr"),
            )
            if attempt + 1 < attempts:
                time.sleep(0.5 * (attempt + 1))
        raise AnsibleConnectionFailure(
            "could not learn the user and group ids in container %s for a file upload: `id -u && id -g` answered "
            "%r with exit code %s (error output %r), %d times"
            % (self.get_option("remote_addr"), answer[1], answer[0], to_text(answer[2]).strip(), attempts)
        )

    def _agent_socket(self, sudoable: bool) -> str | None:
        """The engine's unix socket when this command may run through the agent, else None (docker exec)."""
        if not self.get_option("agent") or not sys.platform.startswith("linux"):
            return None
        if self.become and self.become.expect_prompt() and sudoable:
            return None
        if (self.get_option("remote_user") or "root") not in ("root", "0"):
            return None
        if self.get_option("privileged") or self.get_option("working_dir") is not None:
            return None
        adapter = getattr(self.client, "_custom_adapter", None)
        return adapter.socket_path if isinstance(adapter, UnixHTTPAdapter) else None

    def exec_command(self, cmd, in_data=None, sudoable=False):
        if not self._connected:
            self._connect()
        path = self._agent_socket(sudoable)
        if path:
            container = self.get_option("remote_addr")
            lock = _docker_agent.ContainerLock(container)
            try:
                if not lock.acquire():
                    raise _docker_agent.AgentUnavailable("another command is running through the agent")
                command = _docker_agent.with_environment(
                    to_bytes(cmd, errors="surrogate_or_strict"), self.get_option("extra_env")
                )
                display.vvv(
                    "EXEC %s through the agent%s"
                    % (to_text(cmd), ", with stdin (%d bytes)" % len(in_data) if in_data is not None else ""),
                    host=container,
                )
                sock, first = _docker_agent.attach(
                    path, self.client._version, container, _docker_agent.PING_SECONDS
                )
                try:
                    return _docker_agent.run(
                        sock, first, command, in_data or b"", self._play_context.executable
                    )
                finally:
                    sock.close()
            except _docker_agent.AgentUnavailable as exc:
                display.vvv("the agent cannot run it (%s): docker exec" % exc, host=container)
            except _docker_agent.AgentLost as exc:
                raise AnsibleConnectionFailure("container %s: %s" % (container, exc)) from exc
            finally:
                lock.release()
        return super().exec_command(cmd, in_data=in_data, sudoable=sudoable)

    def put_file(self, in_path: str, out_path: str) -> None:
        if self.actual_user not in self.ids:
            self._learn_ids()
        super().put_file(in_path, out_path)
