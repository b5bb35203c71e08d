import os
import textwrap
from pathlib import Path

import pytest

from tests.helpers import GOOD_SPEC, SHARED_DATA

# CI sets NLSWEEP_DATA; a local `pytest` finds the shared corpora the same way.
if "NLSWEEP_DATA" not in os.environ and SHARED_DATA.is_dir():
    os.environ["NLSWEEP_DATA"] = str(SHARED_DATA)


@pytest.fixture
def write_spec(tmp_path):
    def write(text: str = GOOD_SPEC, name: str = "spec.yaml") -> Path:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text))
        return p

    return write
