"""`--impl reference|student`: run the exercise tests against minqwen3 (default) or against your stubs."""
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]  # the repository: `exercises` must be importable as a package
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(min(2, os.cpu_count() or 1))

PACKAGES = {"reference": "minqwen3", "student": "exercises"}


def pytest_addoption(parser):
    parser.addoption("--impl", choices=sorted(PACKAGES), default="reference",
                     help="exercises/: test the reference package minqwen3 (default) or your code in exercises/")


def pytest_report_header(config):
    impl = config.getoption("--impl")
    return f"exercises: testing the {impl} implementation ({PACKAGES[impl]}.*)"


@pytest.fixture(scope="module")
def impl(request):
    """The module under test: minqwen3.<name> or exercises.<name>, <name> read from the test file (test_<name>.py).

    A test file may name the package module to fall back on when minqwen3 has no module of its name
    (REFERENCE = "generation": sample() lives in minqwen3/generation.py).
    test_mutants.py runs these tests in-process on a deliberately wrong module, passed as config.exercise_impl.
    """
    override = getattr(request.config, "exercise_impl", None)
    if override is not None:
        return override
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    package = PACKAGES[request.config.getoption("--impl")]
    if package == "minqwen3" and importlib.util.find_spec(f"minqwen3.{name}") is None:
        name = getattr(request.module, "REFERENCE", name)
    return importlib.import_module(f"{package}.{name}")
