"""Every ``devassign`` command the documentation shows runs against the demo, as documented.

Starts ``devassign demo --keep-running`` and runs, in order, every line that starts with
``devassign`` in the ``sh`` blocks of README.md and docs/*.md, from the repository's root, with
the demo's ``DEVASSIGN_URL`` and ``DEVASSIGN_TOKEN`` and nothing else substituted. A line must
exit 0, or with the code its comment states (``# exits 1: ...``). A line that cannot run against
the demo (it starts a server or an agent, needs root or this machine's hardware, or would take
the demo's own tokens and hosts away) says ``not run by the docs test`` in its comment, with the
reason (docs/cli.md, "The commands in the documentation").
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.servers import DEVASSIGN, free_port

ROOT = Path(__file__).resolve().parents[2]
MARKER = "not run by the docs test"
EXITS_RE = re.compile(r"\bexits (\d+)\b")
# Options whose value is a file the command reads: it must be in the repository.
FILE_OPTIONS = ("--request", "--config")
# A program the docs show must not take minutes; the demo answers in well under a second.
COMMAND_TIMEOUT = 120
DEMO_START_TIMEOUT = 180


@dataclass(frozen=True)
class Command:
    source: str  # file:line
    text: str
    args: list[str]
    exit_code: int


def documented_commands() -> tuple[list[Command], list[str]]:
    """(the commands to run, the lines excluded with the marker), in reading order."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    commands: list[Command] = []
    excluded: list[str] = []
    for path in files:
        in_sh = False
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith("```"):
                in_sh = not in_sh and stripped[3:].strip() == "sh"
                continue
            if not in_sh or not stripped.startswith("devassign"):
                continue
            where = f"{path.relative_to(ROOT)}:{number}"
            comment = stripped.partition(" #")[2]
            if MARKER in comment:
                excluded.append(f"{where}: {stripped}")
                continue
            found = EXITS_RE.search(comment)
            args = shlex.split(stripped, comments=True)
            commands.append(Command(where, stripped, args, int(found.group(1)) if found else 0))
    return commands, excluded


def _program() -> list[str]:
    """The installed ``devassign`` next to this Python, as a user runs it (else the module)."""
    script = Path(sys.executable).parent / "devassign"
    return [str(script)] if script.is_file() else list(DEVASSIGN)


class Demo:
    """``devassign demo --keep-running`` in the background; its output read by a thread."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [*_program(), "demo", "--keep-running", "--data-dir", str(data_dir), "--port", str(free_port())],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first output line matching ``pattern``, waiting until it comes (or failing when
        the demo exits or ``timeout`` passes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = pattern.search(line)
                if found:
                    return found
            if self.proc.poll() is not None:
                self._reader.join(timeout=5)
                raise AssertionError(f"the demo exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"the demo printed no {pattern.pattern!r} within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return "".join(self.lines)[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # the demo stops on Ctrl-C
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=10)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[Demo, dict[str, str]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVASSIGN_")}
    # The default database (`devassign server`'s without --db, which `db status` reads; a
    # `token create` with no token to ask the server with writes to it): in this test's folder.
    env["DEVASSIGN_DATA_DIR"] = str(tmp_path / "data")
    env["COLUMNS"] = "200"
    subprocess.run([*DEVASSIGN, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=120)
    running = Demo(tmp_path / "demo", env)
    try:
        found = running.wait_for(
            re.compile(r"export DEVASSIGN_URL=(\S+) DEVASSIGN_TOKEN=(\S+)"), DEMO_START_TIMEOUT
        )
        yield running, {**env, "DEVASSIGN_URL": found.group(1), "DEVASSIGN_TOKEN": found.group(2)}
    finally:
        running.stop()


def test_the_documentation_has_commands_and_marks_the_ones_it_does_not_run() -> None:
    commands, excluded = documented_commands()
    assert len(commands) >= 20, [c.source for c in commands]
    shown = {c.args[1] for c in commands if len(c.args) > 1}
    assert {"types", "claim", "explain", "release", "token"} <= shown, shown
    # What the test leaves out is what cannot run against a demo, each with its reason.
    for line in excluded:
        assert re.search(rf"{MARKER}: \S", line), f"say why after '{MARKER}:': {line}"
    for c in commands:
        for option in FILE_OPTIONS:
            if option in c.args[:-1]:
                read = c.args[c.args.index(option) + 1]
                assert (ROOT / read).is_file(), f"{c.source}: {read} is not in the repository"


@pytest.mark.slow
def test_every_documented_command_runs_against_the_demo(demo: tuple[Demo, dict[str, str]]) -> None:
    running, env = demo
    # The demo's one-click sign-in link: the dashboard, signed in as its admin, once.
    link = running.wait_for(re.compile(r"sign in:\s+(\S+/ui/login/once\?code=\S+)"), 5).group(1)
    code = link.split("code=", 1)[1]
    with httpx.Client(timeout=30) as browser:
        page = browser.get(link)  # a page whose button posts the code: opening it spends nothing
        assert page.status_code == 200 and "devassign_token" not in browser.cookies, page.text
        signed = browser.post(link.split("?", 1)[0], data={"code": code})
        assert signed.status_code == 200 and "devassign_token" in browser.cookies, signed.text
        overview = browser.get(env["DEVASSIGN_URL"] + "/ui/", follow_redirects=False)
        assert overview.status_code == 200 and "demo-admin" in overview.text
    with httpx.Client(timeout=30) as another:
        used = another.post(link.split("?", 1)[0], data={"code": code})
        assert "this sign-in link is unknown, used or expired" in used.text
    assert not any(line.rstrip().endswith("catalog") for line in running.lines), running.output()
    commands, _ = documented_commands()
    program = _program()
    failures = []
    for c in commands:
        result = subprocess.run(
            [*program, *c.args[1:]],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        assert "Traceback" not in result.stderr, f"{c.source}: {c.text}\n{result.stderr}"
        if result.returncode != c.exit_code:
            failures.append(
                f"{c.source}: `{c.text}` exited {result.returncode}, the doc says {c.exit_code}\n"
                f"{(result.stderr or result.stdout).strip()[-800:]}"
            )
    assert running.proc.poll() is None, f"the demo stopped during the commands:\n{running.output()}"
    assert not failures, "\n\n".join(failures)
