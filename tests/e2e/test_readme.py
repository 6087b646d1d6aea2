"""README.md as a new user runs it: every command of its ``sh`` and ``python`` blocks, as written, in order,
in one shell session (so ``. .venv/bin/activate`` and ``export`` carry on, as in a terminal), each exiting 0.

Servers — ``make run`` and ``make cluster`` / ``tidelog dev-cluster`` — are what the README tells the reader
to leave running in another terminal: they are started in the background, waited for (the broker's Kafka and
admin ports answer; the dev cluster's ``cluster.json`` appears), and stopped with Ctrl-C (SIGINT) at the end.
``make test`` / ``make test-all`` / ``make test-faults`` are not run: they run this test. ``text`` blocks are
synopses and unlabelled blocks are output or layout; neither is run. A ``python`` block runs with the
virtualenv's interpreter, as the README says.

Two variants:

* fast: the first contact — the top of the README (``make run``) and its five-minute tour — in a copy of the
  working tree whose ``.venv`` reuses this virtualenv (the install step is marked done, so nothing is
  installed into the shared venv); the broker ``make run`` starts gets a fresh ``./data``. About 20 s on a
  quiet 2-core machine (each ``tidelog`` command is a Python start-up, ~0.5 s).
* slow: a fresh ``git clone`` of the committed tree, where ``make run`` really creates the virtualenv and
  installs Tidelog, then every section, the dev cluster's included (about 3 minutes).

The README's addresses are fixed (127.0.0.1:9092, :9644), so when this runs as root with ``unshare`` the
session runs in its own network namespace (its own loopback: no clash with other brokers on this machine); the
fresh-clone variant needs the network for ``pip``, so it runs in the host's and is skipped if a port is taken.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
README_PORTS = (9092, 9644)  # make run's Kafka and admin listeners (Makefile LISTEN / ADMIN)
SESSION_TIMEOUT = 600.0
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

FAST_SECTIONS = ("", "A five-minute tour")
"""The ``##`` sections the fast variant runs ("" is the top of the file, before the first section)."""

NOT_RUN = re.compile(r"^make\s+(test|test-all|test-faults)\b")
"""Commands that would run this test (and the whole suite) again."""


@dataclass(frozen=True)
class Server:
    """A long-running README command: how to tell it is ready, and whether it belongs to the slow variant."""

    pattern: re.Pattern[str]
    ready: str
    """A bash condition that is true once the server serves."""
    slow: bool


SERVERS = (
    Server(re.compile(r"^make\s+run\b"), "__tcp 127.0.0.1 9092 && __tcp 127.0.0.1 9644", slow=False),
    Server(re.compile(r"^(\S*/)?tidelog\s+run\b"), "__tcp 127.0.0.1 9092", slow=False),
    Server(re.compile(r"^make\s+cluster\b"), "[ -s dev-cluster/cluster.json ]", slow=True),
    Server(re.compile(r"^(\S*/)?tidelog\s+dev-cluster\b"), "[ -s dev-cluster/cluster.json ]", slow=True),
)


@dataclass(frozen=True)
class Step:
    """One README command (``sh``: a logical line, continuations joined) or one ``python`` block."""

    section: str
    kind: str  # "sh", "python", "server" or "not-run"
    text: str
    server: Server | None = None


def readme_steps(markdown: str) -> list[Step]:
    """Every command of the README's ``sh`` / ``bash`` / ``python`` blocks, in order, with its ``##`` section."""
    steps: list[Step] = []
    section = ""
    lines = iter(markdown.splitlines())
    for line in lines:
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        fence = re.match(r"^```\s*(\S*)", line)
        if fence is None:
            continue
        lang = fence.group(1).lower()
        body = []
        for inner in lines:
            if inner.startswith("```"):
                break
            body.append(inner)
        if lang == "python":
            steps.append(Step(section, "python", "\n".join(body) + "\n"))
        elif lang in ("sh", "bash", "shell"):
            steps.extend(_shell_steps(section, body))
    return steps


def _shell_steps(section: str, body: list[str]) -> Iterator[Step]:
    logical = ""
    for raw in body:
        logical += raw
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        command, logical = logical.strip(), ""
        if not command or command.startswith("#"):
            continue
        head = command.split(" #")[0].strip()
        if NOT_RUN.match(head):
            yield Step(section, "not-run", command)
            continue
        server = next((s for s in SERVERS if s.pattern.match(head)), None)
        yield Step(section, "server" if server else "sh", command, server)


def slow_sections(steps: list[Step]) -> set[str]:
    return {step.section for step in steps if step.server is not None and step.server.slow}


def session_script(steps: list[Step], work: Path, logs: Path) -> str:
    """One bash session running the steps; stops at the first failure with a line naming the step."""
    out = [
        "set -o pipefail",
        f"cd {shlex.quote(str(work))}",
        "__servers=()",
        "__tcp() { (exec 3<>/dev/tcp/$1/$2) 2>/dev/null; }",
        "__stop() {",
        '  for pg in "${__servers[@]}"; do kill -INT -- -$pg 2>/dev/null; done',
        '  for pg in "${__servers[@]}"; do',
        "    for _ in $(seq 1 300); do kill -0 -- -$pg 2>/dev/null || break; sleep 0.1; done",
        "    kill -KILL -- -$pg 2>/dev/null",
        "  done",
        "}",
        "trap __stop EXIT",
    ]
    for i, step in enumerate(steps):
        quoted = shlex.quote(step.text.splitlines()[0][:200])
        if step.kind == "not-run":
            out.append(f"echo \"### not run: \"{quoted} >&2")
            continue
        out.append(f'echo "### step {i}: "{quoted}" (at ${{EPOCHREALTIME}})" >&2')
        if step.kind == "python":
            block = logs / f"step-{i}.py"
            block.write_text(step.text, encoding="utf-8")
            command = f".venv/bin/python {shlex.quote(str(block))}"
        elif step.kind == "server":
            assert step.server is not None
            log = shlex.quote(str(logs / f"step-{i}.log"))
            out += [
                f"setsid bash -c {shlex.quote(step.text)} >{log} 2>&1 </dev/null &",
                "__pid=$!; __servers+=($__pid)",
                f"for _ in $(seq 1 {int(SESSION_TIMEOUT * 5)}); do {step.server.ready} && break; "
                f'kill -0 $__pid 2>/dev/null || {{ echo "### step {i} FAILED: the server exited" >&2; '
                f"tail -n 40 {log} >&2; exit 3; }}; sleep 0.2; done",
            ]
            continue
        else:
            command = step.text
        out += [
            command,
            f'__rc=$?; [ $__rc -eq 0 ] || {{ echo "### step {i} FAILED with exit code $__rc" >&2; exit 3; }}',
        ]
    out.append('echo "### all steps passed" >&2')
    return "\n".join(out) + "\n"


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def own_network_namespace() -> list[str] | None:
    """``unshare`` into a new network namespace with loopback up, when this process may (root)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=30, check=False)
    if probe.returncode != 0:
        return None
    return ["unshare", "--net", "--", "bash", "-c", 'ip link set lo up && exec bash "$0"']


def run_session(steps: list[Step], work: Path, logs: Path, *, isolate: bool) -> subprocess.CompletedProcess[str]:
    script = logs / "session.sh"
    script.write_text(session_script(steps, work, logs), encoding="utf-8")
    wrapper = own_network_namespace() if isolate else None
    if wrapper is None:
        busy = [port for port in README_PORTS if not port_free(port)]
        if busy:
            pytest.skip(f"the README's ports {busy} are in use here and no network namespace is available")
        wrapper = ["bash"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTEST", "TIDELOG"))}
    env.update(PATH=CLEAN_PATH, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.Popen(
        [*wrapper, str(script)], cwd=work, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=SESSION_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        stdout, stderr = proc.communicate()
        pytest.fail(f"the README session did not finish in {SESSION_TIMEOUT:.0f} s:\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def check(done: subprocess.CompletedProcess[str], steps: list[Step]) -> None:
    report = f"--- stdout (tail) ---\n{done.stdout[-3000:]}\n--- stderr (tail) ---\n{done.stderr[-6000:]}"
    assert done.returncode == 0, report
    assert "### all steps passed" in done.stderr, report
    ran = [step for step in steps if step.kind != "not-run"]
    assert len(re.findall(r"^### step \d+: ", done.stderr, flags=re.MULTILINE)) == len(ran), report


def copy_working_tree(dest: Path) -> None:
    """The tracked and untracked-but-not-ignored files, and a ``.venv`` that is this virtualenv by symlinks,
    with the install stamp newer than pyproject.toml, so ``make run`` installs nothing (and never repoints the
    shared venv's editable install at the copy)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True, timeout=60,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    venv = dest / ".venv"
    venv.mkdir()
    for entry in (REPO / ".venv").iterdir():
        if not entry.name.startswith("."):
            (venv / entry.name).symlink_to(entry)
    for stamp in (".base", ".dev", ".installed"):
        (venv / stamp).touch()


def the_steps() -> list[Step]:
    steps = readme_steps(README.read_text(encoding="utf-8"))
    assert any(step.kind == "server" for step in steps), "the README no longer starts a broker"
    return steps


def test_readme_parsing_finds_the_commands() -> None:
    """The extraction itself, on a small README: continuations, comments, servers, skipped and text blocks."""
    text = (
        "## One\n```sh\nmake run   # start\n# a comment\ntidelog topics \\\n  list\n```\n"
        "```text\ntidelog broker --metadata etcd://H:P\n```\n## Two\n```python\nprint(1)\n```\n"
        "```sh\nmake test\nmake cluster\n```\n```\nlayout/\n```\n"
    )
    steps = readme_steps(text)
    assert [(s.section, s.kind, s.text) for s in steps] == [
        ("One", "server", "make run   # start"),
        ("One", "sh", "tidelog topics    list"),
        ("Two", "python", "print(1)\n"),
        ("Two", "not-run", "make test"),
        ("Two", "server", "make cluster"),
    ]
    assert slow_sections(steps) == {"Two"}


def test_readme_tour(tmp_path: Path) -> None:
    """Fast variant: ``make run`` and every command of the tour, in a copy of the working tree."""
    steps = the_steps()
    fast = [step for step in steps if step.section in FAST_SECTIONS]
    assert not slow_sections(fast)
    assert fast[0].kind == "server" and sum(step.kind != "server" for step in fast) >= 10, fast
    work, logs = tmp_path / "tidelog", tmp_path / "logs"
    work.mkdir()
    logs.mkdir()
    copy_working_tree(work)
    done = run_session(fast, work, logs, isolate=True)
    check(done, fast)


@pytest.mark.slow
def test_readme_from_a_fresh_clone(tmp_path: Path) -> None:
    """Slow variant: ``git clone``, then ``make run`` (creating the venv, installing) and every command."""
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    steps = the_steps()
    work, logs = tmp_path / "tidelog", tmp_path / "logs"
    logs.mkdir()
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(work)], check=True, timeout=120)
    done = run_session(steps, work, logs, isolate=False)
    check(done, steps)
