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
    P(community.docker.docker_api#connection), with the same options and behaviour, and one difference.
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
  id_attempts:
    description:
      - How many times the connection runs C(id -u && id -g) in the container before its first file upload
        when the command returns no usable answer.
    vars:
      - name: bakery_docker_id_attempts
    type: integer
    default: 4
"""

import time

from ansible.errors import AnsibleConnectionFailure
from ansible.module_utils.common.text.converters import to_text
from ansible.utils.display import Display
from ansible_collections.community.docker.plugins.connection.docker_api import (
    Connection as DockerApiConnection,
)

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

    def put_file(self, in_path: str, out_path: str) -> None:
        if self.actual_user not in self.ids:
            self._learn_ids()
        super().put_file(in_path, out_path)
