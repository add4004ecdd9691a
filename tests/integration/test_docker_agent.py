"""The command agent of a build container, on a real engine: the tasks of a role run through it (not a docker
exec each) and see what a docker exec would give them; a task that times out leaves its command running in the
agent, and the next tasks still run (docker exec) and later go through the agent again; the container keeps no
log, and nothing of the agent is left in the container's file system."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid

from conftest import docker_client, run_playbook

PLAY = r"""
- hosts: localhost
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: start
      bakery.images.docker_image_build:
        action: start
        name: "bakery-test/agent-{{ bake_id }}"
        base_image: "{{ base_image }}"
        bake_id: "{{ bake_id }}"
      register: started
    - name: builder
      ansible.builtin.add_host:
        name: "{{ started.container.name }}"
        groups: [builders]
        ansible_connection: bakery.images.docker_api
        ansible_pipelining: true
        ansible_python_interpreter: /usr/bin/python3
        ansible_docker_extra_env: {SYSTEMD_OFFLINE: "1", QUOTED: "it's $HOME"}
        bakery_docker_agent: "{{ started.container.agent }}"

- hosts: builders
  gather_facts: false
  tasks:
    - name: input
      ansible.builtin.command: sha256sum
      args:
        stdin: "{{ 'abc' * 50000 }}"
        stdin_add_newline: false
      register: input
    - name: environment
      ansible.builtin.shell: 'printf "%s|%s|%s" "$SYSTEMD_OFFLINE" "$QUOTED" "$PWD"; id -u >&2'
      register: environment
    - name: upload
      ansible.builtin.copy:
        content: "uploaded\n"
        dest: /etc/agent-upload
        mode: "0640"
    - name: read back
      ansible.builtin.slurp:
        src: /etc/agent-upload
      register: uploaded
    - name: fails
      ansible.builtin.shell: echo on stderr >&2; exit 7
      register: fails
      failed_when: false
    # a process left in the background with the command's output (raw: the command is the connection's): its
    # answer is the command's output, and what the process writes later reaches no later answer
    - name: background
      ansible.builtin.raw: (sleep 1; echo LATE; echo LATE >&2) & echo now
      register: background
    - name: after the background
      ansible.builtin.raw: sleep 1.5; echo next
      register: after_background
    - name: times out
      ansible.builtin.command: sleep 8
      timeout: 2
      ignore_errors: true
      register: timed_out
    - name: while busy
      ansible.builtin.command: echo while busy
      register: while_busy
    - name: wait for the command that timed out
      ansible.builtin.pause:
        seconds: 8
    - name: after
      ansible.builtin.command: echo after
      register: after
    # what the agent cannot give: docker exec gives it
    - name: elsewhere
      ansible.builtin.raw: pwd
      vars:
        ansible_docker_working_dir: /tmp
      register: elsewhere
    - name: as nobody
      ansible.builtin.raw: id -u
      remote_user: nobody
      register: as_nobody
"""


def test_tasks_run_through_the_agent_as_they_would_through_docker_exec(bake_base, tmp_path, docker_leftovers):
    bake_id = "agent-" + uuid.uuid4().hex[:8]
    client = docker_client()
    run = run_playbook(
        PLAY,
        tmp_path,
        extra_vars={"base_image": bake_base["image"], "bake_id": bake_id},
        args=["-i", "localhost,", "-c", "local", "-vvv"],
    )
    containers = client.api.containers(all=True, filters={"label": "bakery-bake-id=%s" % bake_id})
    try:
        assert run.rc == 0, run.explain()
        assert len(containers) == 1
        container = client.api.inspect_container(containers[0]["Id"])
        # the engine keeps no log of the answers (the secrets of no_log tasks among them)
        assert container["HostConfig"]["LogConfig"]["Type"] == "none"
        assert container["Config"]["OpenStdin"] and not container["Config"]["StdinOnce"]

        def result(name: str) -> dict:
            return run.task_result(name)

        assert result("input")["stdout"].split()[0] == hashlib.sha256(b"abc" * 50000).hexdigest()
        assert result("environment")["stdout"] == "1|it's $HOME|/"
        assert result("environment")["stderr"] == "0"
        assert result("upload")["changed"] is True
        assert base64.b64decode(result("read back")["content"]) == b"uploaded\n"
        assert (result("fails")["rc"], result("fails")["stderr"]) == (7, "on stderr")
        assert (result("background")["stdout"], result("background")["stderr"]) == ("now\n", "")
        assert (result("after the background")["stdout"], result("after the background")["stderr"]) == (
            "next\n",
            "",
        )
        assert result("times out").get("failed") and "timed out" in result("times out")["msg"].lower()
        assert result("while busy")["stdout"] == "while busy"
        assert result("after")["stdout"] == "after"
        assert result("elsewhere")["stdout"] == "/tmp\n"
        assert result("as nobody")["stdout"] == "65534\n"

        # where each command ran: the vvv lines of the builder, in order
        lines = [
            line
            for line in run.stdout.splitlines()
            if "through the agent" in line or "docker exec" in line or "EXEC [" in line
        ]
        through = [line for line in lines if "through the agent" in line]
        # every module of the tasks above is one command; the copy task adds its temporary directory's
        assert len(through) >= 10, "\n".join(lines)
        declined = [line for line in lines if "the agent cannot run it" in line]
        # the busy agent was declined for the task while busy only (its module ran with docker exec), and the task
        # after the pause went through it again
        assert declined and all("did not answer" in line for line in declined), "\n".join(lines)
        last = max(i for i, line in enumerate(lines) if "the agent cannot run it" in line)
        assert len(declined) == 1 and "through the agent" in lines[last + 2], "\n".join(lines)
        assert "EXEC ['/bin/sh', '-c', 'pwd']" in lines[-2], "\n".join(lines)
        assert "EXEC ['/bin/sh', '-c', 'id -u']" in lines[-1], "\n".join(lines)

        # nothing of the agent in the container's file system or its /dev/shm
        exec_id = client.api.exec_create(
            containers[0]["Id"], ["sh", "-c", "ls -A /dev/shm /tmp; cat /etc/agent-upload"]
        )["Id"]
        listing = client.api.exec_start(exec_id).decode()
        assert not re.search(r"bakery-(agent|exec)", listing), listing
        assert "uploaded" in listing
        changes = client.api.diff(containers[0]["Id"]) or []
        assert not [c for c in changes if "bakery-agent" in c["Path"]], changes
    finally:
        for found in containers:
            client.api.remove_container(found["Id"], force=True)
