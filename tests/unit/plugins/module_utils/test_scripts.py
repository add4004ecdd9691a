"""A shell provisioner's commands in one call: written with their bytes and modes, run in order by the
interpreter (up to the first that fails, as Packer's shell provisioner), judged by the valid exit codes, and
removed."""

from __future__ import annotations

import base64
import os
import stat
import subprocess

from ansible_collections.bakery.images.plugins.module_utils import _scripts


def run_command(argv):
    proc = subprocess.run(argv, capture_output=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def test_scripts_are_written_as_bytes_and_run_in_order_by_the_interpreter(tmp_path):
    first = tmp_path / "first.sh"
    # not UTF-8, and no newline at the end: the bytes arrive as they are
    first.write_bytes(
        b'printf "%s\\n" "$(basename "$0")"; ls -ld "$(dirname "$0")" | cut -c1-10; printf "\xe9" > '
        + str(tmp_path / "out").encode()
    )
    second = tmp_path / "sub" / "second.sh"
    second.parent.mkdir()
    second.write_text('echo second >&2; stat -c %a "$0"; exit 3\n')
    contents = _scripts.read_scripts([str(first), str(second)])
    assert [item["name"] for item in contents] == ["0-first.sh", "1-second.sh"]
    assert base64.b64decode(contents[0]["data"]) == first.read_bytes()

    directory = tmp_path / "run"
    directory.mkdir()  # left by an interrupted run: replaced
    (directory / "stale").write_text("x")
    result = _scripts.run_scripts(
        str(directory), None, contents, ["/bin/sh", "-e"], [0, 3], True, run_command
    )

    assert result["failed"] is False and result["removed"] is True and result["changed"] is True
    assert not directory.exists()
    assert [item["bakery_run"] for item in result["results"]] == ["0-first.sh", "1-second.sh"]
    one, two = result["results"]
    assert one["cmd"] == ["/bin/sh", "-e", str(directory / "0-first.sh")]
    assert one["stdout_lines"] == ["0-first.sh", "drwx------"] and one["rc"] == 0 and one["msg"] == ""
    assert (tmp_path / "out").read_bytes() == b"\xe9"
    assert two["rc"] == 3 and two["stdout"] == "700" and two["stderr_lines"] == ["second"]
    assert two["msg"] == "non-zero return code" and two["failed"] is False


def test_the_first_invalid_exit_code_stops_the_commands_after_it_and_fails_the_call(tmp_path):
    scripts = []
    for index, code in enumerate([0, 5, 0, 4]):
        path = tmp_path / ("s%d" % index)
        path.write_text(
            "echo ran %d >> %s; echo 'went wrong' >&2; exit %d\n" % (index, tmp_path / "log", code)
        )
        scripts.append(str(path))
    directory = str(tmp_path / "run")
    result = _scripts.run_scripts(
        directory, None, _scripts.read_scripts(scripts), ["/bin/sh"], [0], True, run_command
    )
    # as Packer's shell provisioner: the scripts after the failed one never run
    assert (tmp_path / "log").read_text().split("\n")[:-1] == ["ran 0", "ran 1"]
    assert result["failed"] is True and result["removed"] is True and not os.path.exists(directory)
    assert [item["failed"] for item in result["results"]] == [False, True]
    assert result["not_run"] == ["2-s2", "3-s3"]
    assert result["msg"] == "1-s1 exited with 5 (valid: 0); not run: 2-s2, 3-s3"

    # expect_disconnect: every command runs and the caller judges the exit codes
    (tmp_path / "log").unlink()
    result = _scripts.run_scripts(
        directory, None, _scripts.read_scripts(scripts), ["/bin/sh"], [0], False, run_command
    )
    assert result["failed"] is False and [item["rc"] for item in result["results"]] == [0, 5, 0, 4]
    assert result["not_run"] == [] and len((tmp_path / "log").read_text().split("\n")) == 5


def test_inline_commands_and_check_mode(tmp_path):
    directory = tmp_path / "run"
    result = _scripts.run_scripts(
        str(directory),
        "echo one\necho two\n",
        [],
        ["/bin/sh", "-eu"],
        [0],
        True,
        run_command,
        check_mode=True,
    )
    assert result["results"] == [] and not directory.exists()
    assert result["msg"] == "would write inline to %s and run /bin/sh -eu" % directory

    result = _scripts.run_scripts(
        str(directory), "echo one\necho two\n", [], ["/bin/sh", "-eu"], [0], True, run_command
    )
    assert result["results"][0]["stdout_lines"] == ["one", "two"]
    assert result["results"][0]["cmd"][-1] == str(directory / "inline")


def test_the_directory_goes_also_when_a_command_cannot_start(tmp_path):
    directory = tmp_path / "run"

    def missing(argv):
        raise OSError(2, "No such file or directory: %s" % argv[0])

    try:
        _scripts.run_scripts(str(directory), "true\n", [], ["/no/shell"], [0], True, missing)
    except OSError as exc:
        assert "/no/shell" in str(exc)
    else:
        raise AssertionError("the error of the interpreter got lost")
    assert not directory.exists()


def test_a_name_cannot_leave_the_directory(tmp_path):
    data = base64.b64encode(b"true\n").decode()
    for name in ("../evil", "", ".."):
        try:
            _scripts.run_scripts(
                str(tmp_path / "run"),
                None,
                [{"name": name, "data": data}],
                ["/bin/sh"],
                [0],
                True,
                run_command,
            )
        except ValueError as exc:
            assert "file name" in str(exc)
        else:
            raise AssertionError(name)
    assert not (tmp_path / "evil").exists()
    assert stat.S_ISDIR(os.stat(tmp_path).st_mode)
