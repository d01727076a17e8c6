"""Static checks of the project's shell scripts."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fabfile import command as command_mod

ROOT = Path(__file__).resolve().parent.parent
# A reader that may stop before its writer is done: the writer then dies of SIGPIPE, and
# under `set -o pipefail` the whole pipeline fails at random (issue 11).
EARLY_EXIT = re.compile(r"\|\s*(grep\s+(-\w*[qm]\w*|--quiet|--max-count)|head\b)")


def _scripts():
    for path in sorted(ROOT.rglob("*")):
        if ".venv" in path.parts or ".git" in path.parts or not path.is_file():
            continue
        if path.suffix == ".sh" or path.parent.name == ".ci":
            yield path


def test_scripts_are_found():
    names = {p.name for p in _scripts()}
    assert {"sandbox.sh", "test.sh", "run"} <= names


def test_no_early_exiting_reader_in_a_pipefail_pipeline():
    offenders = []
    for path in _scripts():
        text = path.read_text()
        if "pipefail" not in text:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
            if EARLY_EXIT.search(code):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_the_pattern_is_recognised():
    assert EARLY_EXIT.search("/bin/busybox --list | grep -qx httpd")
    assert EARLY_EXIT.search("ls | head -n 1")
    assert not EARLY_EXIT.search("ls | grep -v foo")


def test_host_programs_as_sent_pass_shellcheck(tmp_path):
    """Each host program as zdd sends it (lib.sh in front: commands.program), and those fed on
    stdin as they are, without a shellcheck finding. Missing shellcheck fails in CI."""
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI") == "true":
            raise AssertionError("shellcheck is missing (apt-get install shellcheck)")
        pytest.skip("shellcheck is not installed")
    alone = {"lib.sh", "install_plugin.sh", "plugin_version.sh"}
    parts = {p for ps in command_mod.PARTS.values() for p in ps}  # checked within their programs
    files = []
    for path in sorted((ROOT / "fabfile" / "remote").glob("*.sh")):
        if path.name in parts:
            continue
        sent = tmp_path / path.name
        sent.write_text(command_mod.script(path.name) if path.name in alone else command_mod.program(path.name))
        files.append(str(sent))
    res = subprocess.run(["shellcheck", "-s", "sh", "-f", "gcc", *files], capture_output=True, text=True)
    assert (res.returncode, res.stdout) == (0, ""), res.stdout + res.stderr
