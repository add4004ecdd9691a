"""Hostile input battery: bad bake definitions and bad module arguments fail before anything is created,
with a message that names the problem and never a Python traceback.

The cases are data: files/hostile/definitions.yml (bake definitions, all planned in one ansible-playbook run
through role bakery.images.bake, as the plan play of playbooks/bake.yml runs it) and files/hostile/modules.yml
(module arguments, one task each, all in one ansible-playbook run). A few definitions also go through the
real playbooks/bake.yml to show that the whole bake stops in its plan play with the same message.
"""

from __future__ import annotations

import copy
import json
import re
import sys
import tarfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from aws import MotoServer, counts
from conftest import REPO, docker_client, run_playbook

FILES = Path(__file__).parent / "files" / "hostile"
DEFINITIONS = yaml.safe_load((FILES / "definitions.yml").read_text())
MODULE_CASES = yaml.safe_load((FILES / "modules.yml").read_text())
WORKERS = 4
# what a user-facing message must never look like: a traceback, Ansible's wrapper for a crashed module, or
# the repr of a Python exception
PYTHON_CRASH = re.compile(
    r"Traceback \(most recent call last\)|MODULE FAILURE|\b(?:Key|Type|Attribute|Value|Index|Name|Assertion|"
    r"UnboundLocal|Recursion|Runtime|ZeroDivision|JSONDecode|UnicodeDecode|FileNotFound|Permission|OS)Error\b|"
    r"^Task failed: |<class '|_AnsibleTagged|\b[A-Z]\w*(?:Error|Exception)\("
)
# a valid bake: each case replaces or adds keys of it
SKELETON = {
    "name": "hostile",
    "output_dir": "@TMP@/output",
    "cache_dir": "@TMP@/cache",
    "base": {"suite": "bookworm", "packages": ["python3"]},
    "targets": [{"name": "docker", "docker": {"repository": "bakery-hostile/web"}}],
}
# the few definitions that also go through the whole of playbooks/bake.yml
END_TO_END = ["unknown-top-level-key", "role-traversal", "docker-dockerfile-malformed"]


def substitute(value, tmp: Path, **words: str):
    """@TMP@ is the test's directory, @LONGn@ a name of n letters, @WORD@ the value of *words* WORD."""
    if isinstance(value, dict):
        return {key: substitute(item, tmp, **words) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, tmp, **words) for item in value]
    if isinstance(value, str):
        long = re.fullmatch(r"@LONG(\d+)@", value)
        if long:
            return "a" * int(long.group(1))
        for word, replacement in dict(words, TMP=str(tmp)).items():
            value = value.replace("@%s@" % word, replacement)
        return value
    return value


def definition(case: dict, tmp: Path) -> dict:
    bake = copy.deepcopy(SKELETON)
    bake.update(copy.deepcopy(case.get("bake") or {}))
    return substitute(bake, tmp)


def make_files(tmp: Path) -> None:
    """What cases point at: Docker contexts (one with a typo on line 3 of its Dockerfile), text files named
    like a tarball and a disk, a tarball cut off in the middle of a member; an empty output directory."""
    good = tmp / "context-ok"
    good.mkdir()
    (good / "Dockerfile").write_text("FROM bakery/debian:bookworm\nRUN true\n")
    bad = tmp / "context-malformed"
    bad.mkdir()
    (bad / "Dockerfile").write_text("# syntax check\nFROM bakery/debian:bookworm\nFORM scratch\nRUN true\n")
    (tmp / "not-a-tarball.tar").write_text("this is a text file, not a tarball\n" * 40)
    (tmp / "not-a-disk.qcow2").write_text("this is a text file, not a disk image\n" * 40)
    member = tmp / "member.bin"
    member.write_bytes(bytes(range(256)) * 400)
    with tarfile.open(tmp / "whole.tar", "w") as tar:
        tar.add(member, arcname="etc/data.bin")
    (tmp / "truncated.tar").write_bytes((tmp / "whole.tar").read_bytes()[:40000])
    with open(
        tmp / "blank.raw", "wb"
    ) as handle:  # a valid (empty) raw disk, for the cases about other things
        handle.truncate(1 << 20)
    (tmp / "out").mkdir()


def assert_clear(where: str, msg: str, expect: list[str], tmp: Path) -> list[str]:
    """Problems with one failure message (an empty list when it names the problem and is no crash)."""
    problems = []
    if not msg:
        problems.append("%s: failed without a message" % where)
    if PYTHON_CRASH.search(msg):
        problems.append("%s: message looks like a Python crash: %s" % (where, msg))
    for text in expect:
        text = text.replace("@TMP@", str(tmp))
        if text not in msg:
            problems.append("%s: message does not name %r: %s" % (where, text, msg))
    return problems


def created_files(tmp: Path) -> list[str]:
    """Anything in the output directories, and any temporary ``.partial`` file anywhere under *tmp*."""
    found = [str(path) for name in ("output", "cache", "out") for path in (tmp / name).rglob("*")]
    found += [str(tmp / name) for name in ("output", "cache") if (tmp / name).exists()]
    return sorted(set(found) | {str(path) for path in tmp.rglob("*.partial")})


def test_hostile_definitions_fail_in_the_plan(tmp_path):
    """Every hostile definition fails in the plan with a message naming the problem; the control passes."""
    make_files(tmp_path)
    cases = [dict(id="valid-control")] + DEFINITIONS
    planned = [
        {"id": case["id"], "bake": definition(case, tmp_path), "vars": case.get("vars") or {}}
        for case in cases
    ]
    started = time.monotonic()
    run = run_playbook(FILES / "plan_all.yml", tmp_path, extra_vars={"cases": planned})
    seconds = time.monotonic() - started
    assert run.rc == 0, run.explain()
    assert "Traceback" not in run.stdout + run.stderr
    items = run.task_result("Plan each definition")["results"]
    results = {item["case"]["id"]: item for item in items}
    assert not results["valid-control"].get("failed"), results["valid-control"]
    problems = []
    for case in DEFINITIONS:
        outcome = results[case["id"]]
        if not outcome.get("failed"):
            problems.append("%s: the plan accepted it" % case["id"])
            continue
        problems += assert_clear(case["id"], outcome.get("msg", ""), case["expect"], tmp_path)
    assert not problems, "\n".join(problems)
    assert created_files(tmp_path) == []
    print("%d hostile definitions planned in %.1f s" % (len(DEFINITIONS), seconds))


@pytest.fixture()
def no_cloud_credentials(monkeypatch):
    """No AWS or Google credentials anywhere the SDKs look, and no instance metadata service to ask."""
    for name in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "GOOGLE_APPLICATION_CREDENTIALS", "GCP_SERVICE_ACCOUNT_FILE",
        "GCP_SERVICE_ACCOUNT_CONTENTS", "GCP_ACCESS_TOKEN",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("CLOUDSDK_CONFIG", "/nonexistent/gcloud")
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:1")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:1")


def test_hostile_module_arguments_fail_before_creating_anything(tmp_path, no_cloud_credentials):
    """Every hostile module call fails fast, before it creates anything, naming the problem."""
    make_files(tmp_path)
    moto = MotoServer(tmp_path / "moto.log")
    try:
        words = {
            "REPO": "bakery-hostile-%s" % uuid.uuid4().hex[:8],
            "BAKEID": "hostile-%s" % uuid.uuid4().hex[:8],
            "MOTO": moto.url,
        }
        # one task per case; the cases are dealt out to WORKERS local hosts that run them side by side
        tasks = [
            {
                "name": case["id"],
                case["module"]: substitute(case["args"], tmp_path, **words),
                "when": "inventory_hostname == 'worker%d'" % (index % WORKERS),
                "ignore_errors": True,
            }
            for index, case in enumerate(MODULE_CASES)
        ]
        play = [{"name": "Hostile module arguments", "hosts": "all", "gather_facts": False, "strategy": "free",
                 "tasks": tasks}]  # fmt: skip
        playbook = tmp_path / "modules.yml"
        playbook.write_text(yaml.safe_dump(play, sort_keys=False))
        inventory = tmp_path / "inventory.ini"
        inventory.write_text(
            "".join(
                "worker%d ansible_connection=local ansible_python_interpreter=%s\n" % (index, sys.executable)
                for index in range(WORKERS)
            )
        )
        aws_before = counts(moto, ["us-east-1"])
        started = time.monotonic()
        run = run_playbook(playbook, tmp_path, args=["-i", str(inventory), "--forks", str(WORKERS)])
        seconds = time.monotonic() - started
        aws_after = counts(moto, ["us-east-1"])
        ec2 = moto.client("ec2")
        made_in_aws = ec2.describe_key_pairs()["KeyPairs"] + [
            group
            for group in ec2.describe_security_groups()["SecurityGroups"]
            if group["GroupName"] != "default"
        ]
    finally:
        moto.stop()
    assert "Traceback" not in run.stdout + run.stderr, run.stdout[-3000:]
    assert run.data, run.stdout[-3000:] + run.stderr[-2000:]
    problems = []
    took = {}
    worker = {case["id"]: "worker%d" % (index % WORKERS) for index, case in enumerate(MODULE_CASES)}
    tasks_run = {}  # the free strategy reports a task once per host: keep the run on the case's worker
    for task in run.data["plays"][0]["tasks"]:
        name = task["task"]["name"]
        if worker.get(name) in task["hosts"]:
            tasks_run[name] = task
    for case in MODULE_CASES:
        task = tasks_run.get(case["id"])
        if task is None:
            problems.append("%s: did not run" % case["id"])
            continue
        result = task["hosts"][worker[case["id"]]]
        if not result.get("failed"):
            problems.append("%s: the module accepted it" % case["id"])
            continue
        expect = substitute(case["expect"], tmp_path, **words)
        problems += assert_clear(case["id"], result.get("msg", ""), expect, tmp_path)
        took[case["id"]] = duration(task)
        if took[case["id"]] > case.get("seconds", 15):
            problems.append("%s: took %.1f s to fail" % (case["id"], took[case["id"]]))
    slowest = sorted(took.items(), key=lambda item: -item[1])[:5]
    print("slowest cases: %s" % ", ".join("%s %.1f s" % item for item in slowest))
    assert not problems, "\n".join(problems)
    # nothing was created: no file, no temporary file, no image, no container, nothing in moto
    assert created_files(tmp_path) == []
    client = docker_client()
    assert [
        tag for image in client.images.list() for tag in image.tags if tag.startswith(words["REPO"])
    ] == []
    assert client.containers.list(all=True, filters={"label": "bakery-bake-id=%s" % words["BAKEID"]}) == []
    assert aws_after == aws_before
    assert made_in_aws == []
    print("%d hostile module calls in %.1f s" % (len(MODULE_CASES), seconds))


def duration(task: dict) -> float:
    """Seconds a task of the json callback's output took."""
    from datetime import datetime

    span = task["task"]["duration"]
    start, end = (datetime.fromisoformat(span[key].replace("Z", "+00:00")) for key in ("start", "end"))
    return (end - start).total_seconds()


def bake_end_to_end(case: dict, tmp: Path) -> tuple[dict, object]:
    make_files(tmp)
    (tmp / "out").rmdir()
    path = tmp / "bake.json"
    path.write_text(json.dumps({"bake": definition(case, tmp)}))
    extra = [arg for item in (case.get("vars") or {}).items() for arg in ("-e", "%s=%s" % item)]
    return case, run_playbook(REPO / "playbooks" / "bake.yml", tmp, args=["-e", "@%s" % path, *extra])


def test_hostile_definitions_stop_the_whole_bake_in_its_plan_play(tmp_path):
    """A few of the definitions through playbooks/bake.yml itself: the run fails in the plan play, with the
    message the plan gave above, and no later play runs on any host."""
    cases = [case for case in DEFINITIONS if case["id"] in END_TO_END]
    assert len(cases) == len(END_TO_END)
    dirs = [tmp_path / case["id"] for case in cases]
    for directory in dirs:
        directory.mkdir()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        outcomes = list(pool.map(bake_end_to_end, cases, dirs))
    seconds = time.monotonic() - started
    problems = []
    for (case, run), directory in zip(outcomes, dirs):
        where = case["id"]
        if run.rc == 0 or not run.data:
            problems.append("%s: the bake did not fail (rc %s): %s" % (where, run.rc, run.stdout[-2000:]))
            continue
        if "Traceback" in run.stdout + run.stderr:
            problems.append("%s: a traceback in the output" % where)
        plays = run.data["plays"]
        failed = [
            (index, result)
            for index, play in enumerate(plays)
            for task in play["tasks"]
            for result in task["hosts"].values()
            if result.get("failed")
        ]
        if not failed or failed[0][0] != 0 or plays[0]["play"]["name"] != "Plan the bake":
            problems.append("%s: the first failure is not in the plan play: %s" % (where, failed[:1]))
            continue
        later = [task["task"]["name"] for play in plays[1:] for task in play["tasks"] if task["hosts"]]
        if later:
            problems.append("%s: later plays ran tasks: %s" % (where, later))
        problems += assert_clear(where, failed[0][1].get("msg", ""), case["expect"], directory)
        problems += ["%s: created %s" % (where, path) for path in created_files(directory)]
    assert not problems, "\n".join(problems)
    print("%d hostile definitions through playbooks/bake.yml in %.1f s" % (len(cases), seconds))
