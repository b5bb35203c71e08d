import os
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.helpers import GOOD_SPEC, SHARED_DATA

# CI sets NLSWEEP_DATA; a local `pytest` finds the shared corpora the same way.
if "NLSWEEP_DATA" not in os.environ and SHARED_DATA.is_dir():
    os.environ["NLSWEEP_DATA"] = str(SHARED_DATA)


@pytest.fixture
def write_spec(tmp_path):
    def write(text: str | dict = GOOD_SPEC, name: str = "spec.yaml") -> Path:
        """A spec file from YAML text, or from a dict (dumped with yaml.safe_dump)."""
        p = tmp_path / name
        p.write_text(yaml.safe_dump(text, sort_keys=False) if isinstance(text, dict)
                     else textwrap.dedent(text))  # fmt: skip
        return p

    return write


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder for plugin files; the modules they add, and every model kind, optimizer,
    corpus and evaluator they register, are forgotten afterwards."""
    from models import optim, registry
    from nlsweep.data import registry as corpora
    from nlsweep.training import evaluators

    tables = (registry._KINDS, optim._OPTIMIZERS, corpora._CORPORA, evaluators._EVALUATORS)
    before = set(sys.modules)
    known = [set(t) for t in tables]
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    yield tmp_path
    for name in set(sys.modules) - before:  # the plugins' modules only (never ray's, say)
        if str(tmp_path) in str(getattr(sys.modules[name], "__file__", "") or ""):
            del sys.modules[name]
    for table, names in zip(tables, known):
        for name in set(table) - names:
            del table[name]
