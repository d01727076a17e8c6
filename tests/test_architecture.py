"""How fabfile/ is built, checked: imports go one way down the layers README's "How it is
built" names, never in a cycle; no module outside fabfile/engines/ and config.py asks which
engine runs; no module is over 400 lines; no host script names an engine."""

from __future__ import annotations

import ast
import re
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "fabfile"

# top to bottom: a module may import from its own layer or a lower one, never a higher one
LAYERS = [
    ("tasks", ["fabfile/__init__.py", "fabfile/tasks.py"]),
    ("running a task", ["fabfile/taskrun.py", "fabfile/hosts_run.py", "fabfile/html_page.py", "fabfile/summary.py"]),
    ("the deploy sequence", ["fabfile/sequence.py"]),
    ("engines", ["fabfile/engines/*.py"]),
    (
        "shared steps, lock and journal",
        ["fabfile/steps.py", "fabfile/locking.py", "fabfile/history.py", "fabfile/hooks.py", "fabfile/notify.py"],
    ),
    ("host session", ["fabfile/session.py"]),
    (
        "runner and what a run reports",
        ["fabfile/runner.py", "fabfile/progress.py", "fabfile/outcome.py", "fabfile/interrupts.py"],
    ),
    (
        "command builders and host data",
        [
            "fabfile/command.py",
            "fabfile/commands.py",
            "fabfile/commands_swarm.py",
            "fabfile/plan.py",
            "fabfile/proxy.py",
            "fabfile/canary.py",
            "fabfile/journal.py",
            "fabfile/release.py",
            "fabfile/timeline.py",
        ],
    ),
    ("config and the verify loop", ["fabfile/config.py", "fabfile/config_*.py", "fabfile/verify/*.py"]),
]
ENGINE_NAMES = ("native", "docker-rollout", "swarm")


def modules() -> dict[str, Path]:
    """fabfile's modules by dotted name."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The fabfile modules ``name`` imports (at any depth of the file, TYPE_CHECKING included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from X import Y`: the module X.Y when there is one, else X (Y is a name in it)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {n: imports(n, p, set(mods)) for n, p in mods.items()}


def layer_of(path: Path) -> int:
    rel = path.relative_to(ROOT).as_posix()
    for i, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch(rel, p) for p in patterns):
            return i
    raise AssertionError(f"{rel} is in no layer: add it to LAYERS here and to README's 'How it is built'")


def test_every_module_has_a_layer():
    for path in modules().values():
        layer_of(path)


def test_imports_never_go_up_the_layers():
    mods = modules()
    up = []
    for name, deps in graph().items():
        for dep in deps:
            if dep in mods and layer_of(mods[dep]) < layer_of(mods[name]):
                up.append(
                    f"{name} ({LAYERS[layer_of(mods[name])][0]}) imports {dep} ({LAYERS[layer_of(mods[dep])][0]})"
                )
    assert not up, "imports that go up the layers:\n" + "\n".join(sorted(up))


def find_cycle(g: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str]:
        state[n] = 1
        stack.append(n)
        for d in sorted(g.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return []

    for n in sorted(g):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return []


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


NAMES = "|".join(ENGINE_NAMES)
NAME_TEST = re.compile(
    r"""(==|!=|\bin\b)\s*[(\[{]?\s*["'](NAMES)["']|["'](NAMES)["']\s*(==|!=)|\.engine\s*(==|!=|\bin\b)""".replace(
        "NAMES", NAMES
    )
)


def test_only_engines_and_config_ask_which_engine_runs():
    offenders = []
    for path in sorted(list(PKG.rglob("*.py")) + [ROOT / "tasks.py"]):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("fabfile/engines/") or rel == "fabfile/config.py":
            continue
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if NAME_TEST.search(line) or re.search(r"\bengine\.name\b|\bhost\.engine\b", line):
                offenders.append(f"{rel}:{no}: {line.strip()}")
    assert not offenders, "engine names tested outside fabfile/engines/ and config.py:\n" + "\n".join(offenders)


@pytest.mark.parametrize("line", ['if s.host.engine == "swarm":', "x = engine.name", "return 'native' == e"])
def test_the_engine_name_check_finds_what_it_looks_for(line):
    assert NAME_TEST.search(line) or re.search(r"\bengine\.name\b|\bhost\.engine\b", line)


SCRIPT_NAME_TEST = re.compile(r"\$\{?engine\b|=\s*[\"']?(NAMES)[\"']?\s*\]|\b(NAMES)\)".replace("NAMES", NAMES))


def test_no_host_script_branches_on_an_engine_name():
    found = []
    for path in sorted((PKG / "remote").glob("*.sh")):
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if SCRIPT_NAME_TEST.search(line.split("#", 1)[0]):
                found.append(f"{path.name}:{no}: {line.strip()}")
    assert not found, "host scripts that branch on an engine name:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "line", ['if [ "$engine" = docker-rollout ]; then', '[ "$x" = "swarm" ] && y', "native) go ;;"]
)
def test_the_script_check_finds_what_it_looks_for(line):
    assert SCRIPT_NAME_TEST.search(line)


def test_no_module_over_400_lines():
    big = {p.relative_to(ROOT).as_posix(): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not big, f"modules over 400 lines: {big}"
