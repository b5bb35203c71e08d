"""The package layout keeps itself: no import cycles (imports inside functions counted), each
package's `__all__` is importable, and the torch-free packages load no torch at run time
(import-linter's contracts, run by the README's test command, check the static graph)."""

import importlib
import subprocess
import sys

import grimp
import pytest

from tests.helpers import ROOT

PACKAGES = [
    "config", "data", "training", "testing", "tracking", "evaluation", "spec", "report",
    "execution",
]  # fmt: skip


def strongly_connected(graph, modules: set[str]) -> list[list[str]]:
    """Tarjan's components of more than one module (each one is an import cycle)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v) & modules:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(modules):
        if m not in index:
            visit(m)
    return out


def test_no_import_cycles_counting_imports_inside_functions():
    graph = grimp.build_graph("nlsweep", "models")
    cycles = strongly_connected(graph, set(graph.modules))
    assert cycles == [], f"import cycles: {cycles}"


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    """The check above can fail: a two-module package whose second module imports the first
    inside a function is a cycle."""
    pkg = tmp_path / "loopy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from loopy import b\n")
    (pkg / "b.py").write_text("def f():\n    from loopy import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("loopy")
    assert strongly_connected(graph, set(graph.modules)) == [["loopy.a", "loopy.b"]]


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_names_its_public_surface(package):
    mod = importlib.import_module(f"nlsweep.{package}")
    assert mod.__doc__ and mod.__all__
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert missing == []


def test_the_top_level_api_loads_on_first_use():
    import nlsweep

    for name in nlsweep.__all__:
        assert getattr(nlsweep, name) is not None
    with pytest.raises(AttributeError):
        nlsweep.no_such_thing  # noqa: B018


@pytest.mark.parametrize(
    "module", ["nlsweep.report", "nlsweep.tracking", "nlsweep.config", "nlsweep", "models"]
)
def test_torch_free_packages_load_no_torch_or_ray(module):
    code = f"import sys, {module}; print(sorted({{'torch', 'ray'}} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_documented_surfaces_are_the_packages_all():
    """docs/architecture.md lists each package's `__all__`, and the list is the code's."""
    import re

    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("## Each package's public surface", 1)[1]
    documented = {
        m.group(1): set(re.findall(r"`([^`]+)`", m.group(2)))
        for m in re.finditer(r"^\| `([\w.]+)` \| (.*) \|$", table, re.M)
    }
    packages = ["nlsweep", "models", *(f"nlsweep.{p}" for p in PACKAGES)]
    assert sorted(documented) == sorted(packages)
    for name in packages:
        assert documented[name] == set(importlib.import_module(name).__all__), name


def test_importing_nlsweep_loads_no_lm_eval():
    """lm-eval (and the datasets it pulls in) loads only when an evaluation runs."""
    mods = "nlsweep, nlsweep.evaluation, nlsweep.execution, nlsweep.cli, nlsweep.api"
    code = f"import sys, {mods}; print('lm_eval' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
