"""`--impl reference|student`: run the exercise tests against minqwen3 (default) or against your stubs."""
import importlib
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
    """The module under test: minqwen3.<name> or exercises.<name>, <name> read from the test file (test_<name>.py)."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    return importlib.import_module(f"{PACKAGES[request.config.getoption('--impl')]}.{name}")
