"""Every test case beside the shipped policies (`policies/*/tests/tests.yaml`), one pytest case each,
run through the same code as `comptroller check --tests`."""

from pathlib import Path

import pytest

from controller.check import find_test_files, run_test_file

POLICIES = Path(__file__).resolve().parents[2] / "policies"
TEST_FILES = find_test_files([POLICIES])


def _cases():
    for path in TEST_FILES:
        results, errors = run_test_file(path)
        assert not errors, errors
        for result in results:
            yield pytest.param(result, id=f"{path.parent.parent.name}:{result.resource}")


def test_every_policy_folder_has_cases():
    folders = {p.parent.parent.name for p in TEST_FILES}
    assert {"default", "examples"} <= folders


@pytest.mark.parametrize("result", list(_cases()))
def test_policy_case(result):
    assert result.passed, "\n".join(result.problems)
