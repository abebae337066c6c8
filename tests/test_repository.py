"""The repository itself: what it needs from Debian is all in tools/debian-packages.txt, every
document it sends a reader to is in it, every client command a text gives is accepted as written,
and a failed echo comparison explains itself at once.

A fresh machine gets only what that list names (make deps, .ci/run, tools/fresh-machine), so a
Python module imported by a client, test or tool that is neither in the standard library, nor
provided by a listed package, nor one of the repository's own, works only on a machine that
happened to have it. These tests need no server built.
"""

import argparse
import ast
import random
import re
import runpy
import shlex
import subprocess
import sys
import time

import pytest

from conftest import ROOT

LIST = ROOT / "tools/debian-packages.txt"
PYTHON_DIRS = ["clients", "tests", "tools"]
CHECK_KINDS = ("cmd:", "file:", "python:")
# `deps` is what make deps installs for every build and test; the others, only their target.
TARGETS = {"deps", "bench", "compile_commands", "fresh-machine"}


def package_rows():
    """(line number, package, check, for, why) for every row of the list."""
    rows = []
    for number, line in enumerate(LIST.read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            fields = line.split(None, 3)
            rows.append((number, *fields, *[""] * (4 - len(fields))))
    return rows


def listed_modules(target=None):
    """Module name -> package, for the python: checks of the rows for `target` (all if None)."""
    return {module: package for _, package, check, for_, _ in package_rows()
            if check.startswith("python:") and target in (None, for_)
            for module in check.removeprefix("python:").split(",")}


def python_files():
    """Every .py file, and every script whose first line runs python, under PYTHON_DIRS."""
    for directory in PYTHON_DIRS:
        for path in sorted((ROOT / directory).rglob("*")):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            if path.suffix == ".py":
                yield path
            elif not path.suffix:
                with path.open("rb") as script:
                    if re.match(rb"#!.*python", script.readline()):
                        yield path


def own_modules():
    """What `import X` can name in this repository: a package at the top (clients) or any module
    of PYTHON_DIRS (conftest, and siblings a script imports from its own directory)."""
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    return packages | {p.stem for p in python_files() if p.suffix == ".py"}


def imports(path):
    """(line, top-level module) for every absolute import in the file, at any depth (bench.py
    imports matplotlib inside the functions that draw)."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.lineno, node.module.split(".")[0]


def test_every_imported_module_is_standard_listed_or_our_own():
    installed_by_deps, listed, own = listed_modules("deps"), listed_modules(), own_modules()
    files = list(python_files())
    assert len(files) > 10 and any(p.name == "bench.py" for p in files), f"too few Python files found: {files}"
    problems = []
    for path in files:
        for line, module in imports(path):
            if module in sys.stdlib_module_names or module in installed_by_deps or module in own:
                continue
            where = f"{path.relative_to(ROOT)}:{line} imports {module}"
            if module in listed:
                problems.append(f"{where}, which {listed[module]} provides, but only for its own target: make test "
                                f"runs every client (bench.py's smoke run too), so its row in tools/{LIST.name} needs "
                                f"`deps` in the for column")
            else:
                problems.append(f"{where}: not in Python's standard library, not provided by a package in "
                                f"tools/{LIST.name} (a python:{module} check), not the repository's own module; "
                                f"add its Debian package there (apt-cache search python3-{module.lower()})")
    assert not problems, "\n".join(problems)


def test_the_import_check_sees_what_it_should():
    """The check above is only as good as its parts: they find matplotlib (imported inside a
    function), the repository's own modules, and know pytest comes from the list."""
    bench = dict((module, line) for line, module in imports(ROOT / "clients/bench.py"))
    assert "matplotlib" in bench and "clients" in bench, f"bench.py's imports, as parsed: {sorted(bench)}"
    assert {"clients", "conftest"} <= own_modules()
    assert {"pytest", "xdist", "pytest_timeout", "matplotlib"} <= set(listed_modules("deps"))
    assert "numpy" not in sys.stdlib_module_names | own_modules() | set(listed_modules())


def test_package_list_rows_are_well_formed():
    problems, seen = [], set()
    for number, package, check, for_, why in package_rows():
        where = f"tools/{LIST.name}:{number} ({package})"
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", package):
            problems.append(f"{where}: not a Debian package name")
        if package in seen:
            problems.append(f"{where}: listed twice")
        seen.add(package)
        if not check.startswith(CHECK_KINDS) or check.endswith(":"):
            problems.append(f"{where}: the check {check!r} should be one of {', '.join(k + '...' for k in CHECK_KINDS)}")
        if for_ not in TARGETS:
            problems.append(f"{where}: the for column {for_!r} should be one of {sorted(TARGETS)}")
        if not why:
            problems.append(f"{where}: says no reason; need-packages prints it when it installs the package")
    assert not problems, "\n".join(problems)


def test_every_target_in_the_list_asks_for_its_packages():
    """A row for a target that never calls tools/need-packages with its name is never installed."""
    callers = [p for p in (ROOT / "Makefile", ROOT / ".ci/run", ROOT / "clients/bench.py", ROOT / "tools/fresh-machine")
               if p.exists()]
    asked = set()
    for path in callers:
        for line in path.read_text().splitlines():
            if "need-packages" in line:
                asked.update(re.findall(r"[\w-]+", line.split("need-packages", 1)[1]))
    missing = {for_ for _, _, _, for_, _ in package_rows()} - asked
    assert not missing, (f"rows of tools/{LIST.name} are for {sorted(missing)}, but no call of tools/need-packages in "
                         f"{', '.join(str(p.relative_to(ROOT)) for p in callers)} asks for them")


def tracked_files(*patterns):
    listed = subprocess.run(["git", "ls-files", "-z", *patterns], cwd=ROOT, capture_output=True, check=True)
    return [ROOT / name for name in listed.stdout.decode().split("\0") if name]


def test_every_link_in_a_text_leads_to_a_file_in_the_repository():
    broken = []
    for text in tracked_files("*.md"):
        for number, line in enumerate(text.read_text().splitlines(), 1):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                path = target.split("#")[0]
                if path and not re.match(r"[a-z]+:", path) and not (text.parent / path).exists():
                    broken.append(f"{text.relative_to(ROOT)}:{number}: {target}")
    assert not broken, "links to files the repository does not have:\n" + "\n".join(broken)


def test_every_document_named_is_in_the_repository():
    """A learner has only what the repository holds: a text, comment or message that sends them
    to a document (say, a design note kept elsewhere) must name one that is here."""
    documents = {path.name for path in tracked_files("*.md")}
    missing = []
    for path in tracked_files("*.md", "*.py", "*.cpp", "*.h", "Makefile", "tools/*", ".ci/*"):
        if path.is_file():
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                missing += [f"{path.relative_to(ROOT)}:{number}: {name}"
                            for name in re.findall(r"[\w.-]+\.md\b", line) if name not in documents]
    assert not missing, "documents named that the repository does not have:\n" + "\n".join(missing)


class Parsed(Exception):
    """Raised where a client would start its work, once its command line has parsed."""


def client_commands_in_texts():
    """(where, script, arguments) for every `python3 clients/NAME.py ...` a text gives a learner."""
    commands = []
    for text in tracked_files("*.md"):
        for number, line in enumerate(text.read_text().splitlines(), 1):
            for script, rest in re.findall(r"python3 (clients/\w+\.py)([^`|\n]*)", line):
                rest = rest.replace("$!", "4242").replace("70NN", "7001")  # a shell's PID, a lesson's port
                arguments = [word for word in shlex.split(rest, comments=True) if word != "&"]
                commands.append((f"{text.relative_to(ROOT)}:{number}", script, arguments))
    return commands


def test_every_client_command_in_a_text_parses(monkeypatch, capsys):
    """A command a lesson tells the learner to type must at least be accepted as written. Each is
    parsed by the client's own argparse; the client stops there, before it connects or starts a server."""
    def parse_then_stop(parser, args=None, namespace=None):
        original_parse_args(parser, args, namespace)
        raise Parsed

    original_parse_args = argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    commands, refused = client_commands_in_texts(), []
    assert commands, "found no `python3 clients/...` command in the texts: has their form changed?"
    for where, script, arguments in commands:
        monkeypatch.setattr(sys, "argv", [script, *arguments])
        try:
            runpy.run_path(str(ROOT / script), run_name="__main__")
            refused.append(f"{where}: {script} {' '.join(arguments)}: ran without parsing its arguments")
        except Parsed:
            pass
        except SystemExit:
            refused.append(f"{where}: {script} {' '.join(arguments)}: {capsys.readouterr().err.strip()}")
    assert not refused, "commands in the texts that the client refuses as written:\n" + "\n".join(refused)


@pytest.mark.timeout(20)
def test_two_different_1_mib_echoes_are_explained_within_a_second_even_in_lists(pytestconfig, monkeypatch):
    """pytest diffs the two sides of a failed == with difflib when the environment says CI (as CI
    machines set it) or under -v: for 1 MiB of bytes that took minutes, so a caught mistake hung
    until the timeout instead of failing with its message."""
    monkeypatch.setenv("CI", "true")
    sent, echoed = (random.Random(seed).randbytes(1 << 20) for seed in (1, 2))
    for left, right in ((sent, echoed), ([sent, sent], [sent, echoed])):
        started = time.monotonic()
        explanation = explain(pytestconfig, left, right)
        took = time.monotonic() - started
        assert took < 1, f"explaining a failed == between two {type(left).__name__}s of 1 MiB echoes took {took:.1f} s"
        assert explanation and "too long to diff" in explanation[-1], f"expected only the sizes: {explanation}"
    short = explain(pytestconfig, b"echo", b"echa")
    assert short and not any("too long" in line for line in short), f"a short echo keeps pytest's diff: {short}"


def explain(config, left, right):
    """What a failed `left == right` prints under its assertion: pytest asks every implementation
    of its hook, as it does for a failed assert, and shows the first answer."""
    answers = config.hook.pytest_assertrepr_compare(config=config, op="==", left=left, right=right)
    return next((answer for answer in answers if answer), None)
