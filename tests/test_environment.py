"""environment.yml and pyproject.toml list the same dependencies."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    pins = {_name(r): r.replace(" ", "") for r in reqs}
    text = (ROOT / "environment.yml").read_text().split("- pip:", 1)[1]  # the pip section holds the packages
    pip = {_name(r): r.replace(" ", "") for r in (l.strip()[2:] for l in text.splitlines())
           if r and not r.startswith("-")}  # not -e . nor --extra-index-url
    assert set(pip) == set(pins), f"only in environment.yml: {set(pip) - set(pins)}; only in pyproject: {set(pins) - set(pip)}"
    for name, req in pins.items():  # version bounds agree, except torch which the yml pins exactly
        if name != "torch" and req != name:
            assert pip[name] == req, (name, pip[name], req)
    assert pip["torch"] == "torch==2.13.0"  # the pin the Makefile installs first
    assert "torch==2.13.0" in (ROOT / "Makefile").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in text  # the CPU build, as the Makefile's
