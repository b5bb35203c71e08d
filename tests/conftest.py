import os
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
