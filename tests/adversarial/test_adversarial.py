"""The adversarial suite: every case, hoisting off and on, against its stated true layouts."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import check  # noqa: E402

CASES = []
for mod in sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.startswith("cases_")):
    CASES += importlib.import_module(mod).CASES

assert len({c.name for c in CASES}) == len(CASES), "case names must be unique"


@pytest.mark.parametrize("hoist", [False, True], ids=["plain", "hoisted"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_case(case, hoist):
    check(case, hoist)
