"""The adversarial suite: every case, hoisting off and on, against its stated true layouts;
a few hoisting cases also as a training step (gradients hoisted = gradients not)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import check, check_training  # noqa: E402

CASES = []
for mod in sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.startswith("cases_")):
    CASES += importlib.import_module(mod).CASES

assert len({c.name for c in CASES}) == len(CASES), "case names must be unique"


@pytest.mark.parametrize("hoist", [False, True], ids=["plain", "hoisted"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_case(case, hoist):
    check(case, hoist)


# exits through reductions, contractions and in-place writes over the tokens, in the backward too
# (all hoisting cases pass so; these few keep the CI time down)
TRAINING = ("tail_sum_tokens", "tail_cumsum_tokens", "tail_token_matmul", "inplace_add_slice_of_self")


@pytest.mark.parametrize("case", [c for c in CASES if c.name in TRAINING], ids=str)
def test_training_case(case):
    be = check_training(case)
    assert sum(r.backward_calls for r in be.hoist_results) == 2, [str(r) for r in be.hoist_results]
