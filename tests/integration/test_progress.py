"""The bake_progress callback (enabled in the repository's ansible.cfg): long tasks are never silent, and
the bake summary comes again after the recap."""

from __future__ import annotations

import re

from conftest import LOCAL, run_playbook

LONG_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Something long
      ansible.builtin.command: sleep 11
      changed_when: false
    - name: Something short
      ansible.builtin.command: "true"
      changed_when: false
"""


def test_long_task_prints_progress_lines(tmp_path):
    run = run_playbook(
        LONG_PLAY, tmp_path, args=LOCAL, json_output=False, env={"BAKERY_PROGRESS_INTERVAL": "3"}
    )
    assert run.rc == 0, run.explain()
    seconds = [
        int(s) for s in re.findall(r"^still waiting: Something long on localhost, (\d+) s$", run.stdout, re.M)
    ]
    # one line about every 3 s while the 11 s task runs: at 3, 6 and 9 s (a loaded machine may lose one)
    assert len(seconds) >= 2, run.stdout
    assert seconds[0] >= 3 and all(2 <= b - a <= 5 for a, b in zip(seconds, seconds[1:])), seconds
    assert "still waiting: Something short" not in run.stdout


def test_json_output_stays_json(tmp_path):
    play = LONG_PLAY.replace("sleep 11", "sleep 4")
    machine = run_playbook(play, tmp_path, args=LOCAL, env={"BAKERY_PROGRESS_INTERVAL": "1"})
    assert machine.rc == 0 and machine.data is not None
    assert "still waiting" not in machine.stdout


REPORT_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Write the manifest
      bakery.images.bake_report:
        plan:
          name: demo
          bake_id: 20261127t120000-abcdef
          manifest: "{{ manifest }}"
          skipped_targets: [vm]
        results:
          - target: web
            type: docker
            artifact:
              target: web
              type: docker
              status: built
              id: "sha256:0123456789abcdef0123"
              name: bakery/web
              tags: ["bakery/web:latest"]
              architecture: arm64
              size: 218103808
              fingerprint: "{{ '%064x' % 1 }}"
              build_seconds: 35.1
          - target: cli
            type: docker
            artifact:
              target: cli
              type: docker
              status: unchanged
              id: "sha256:fedcba9876543210fedc"
              name: bakery/cli
              tags: ["bakery/cli:1.0"]
              size: 1048576
              fingerprint: "{{ '%064x' % 2 }}"
"""


def test_bake_summary_follows_the_recap(tmp_path):
    manifest = tmp_path / "out" / "bake-manifest.json"
    run = run_playbook(
        REPORT_PLAY, tmp_path, extra_vars={"manifest": str(manifest)}, args=LOCAL, json_output=False
    )
    assert run.rc == 0, run.explain()
    tail = run.stdout[run.stdout.index("PLAY RECAP") :]
    summary = tail[tail.index("BAKE SUMMARY") :]
    assert "bake demo (20261127t120000-abcdef): 1 built, 1 unchanged" in summary
    assert re.search(
        r"web\s+docker\s+arm64\s+bakery/web:latest\s+0123456789ab\s+208\.0 MiB\s+built in 35\.1 s", summary
    )
    # an artifact whose architecture is not known says so
    assert re.search(r"cli\s+docker\s+-\s+bakery/cli:1\.0\s+fedcba987654\s+1\.0 MiB\s+unchanged", summary)
    assert "not selected: vm" in summary
    assert "manifest: %s" % manifest in summary and manifest.is_file()
