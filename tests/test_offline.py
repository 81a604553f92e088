"""A student's clone has no ../shared: notebooks, exercises and the package must run from the repository alone.

CI has ../shared beside the clone, so a notebook or exercise that read it would pass there and fail for students;
these tests look at the sources instead. Tests (tests/) may read ../shared: it is their oracle data.
"""
import json
import re
from pathlib import Path

import pytest

from conftest import REF

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "minqwen3" / "assets"
# "../shared", "shared/reference", Path(...) / "shared" / "reference", parents[2] / "shared"
SHARED = re.compile(r"""\.\./shared|shared[/\\]reference|["']shared["']""")


def _sources():
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        yield nb.name, "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    for py in sorted([*(ROOT / "exercises").glob("*.py"), *(ROOT / "minqwen3").rglob("*.py")]):
        yield str(py.relative_to(ROOT)), py.read_text(encoding="utf-8")


@pytest.mark.parametrize("name,source", list(_sources()), ids=lambda v: v if v.endswith((".py", ".ipynb")) else "")
def test_does_not_read_shared(name, source):
    hits = [line.strip() for line in source.splitlines() if SHARED.search(line)]
    assert not hits, f"{name} refers to ../shared, which a student's clone lacks: {hits}"


def test_the_scan_finds_a_reference():
    """The pattern above must catch the ways a path to ../shared gets written (a scan that cannot fail is useless)."""
    for line in ['REF = Path(__file__).parents[2] / "shared" / "reference" / "qwen3"',
                 "open('../shared/reference/qwen3/tokenizer.json')", 'p = "/work/shared/reference/qwen3"']:
        assert SHARED.search(line), line
    assert not SHARED.search("no shared expert: every token is routed")


def test_shipped_template_is_the_official_revision():
    """minqwen3/assets/chat_template.jinja is the official template (the revision with `is string` guards), and the
    demo checkpoints and the shipped tokenizer_config.json carry the same one."""
    template = (ASSETS / "chat_template.jinja").read_text(encoding="utf-8")
    assert "message.content is string" in template
    if (REF / "chat_template.jinja").is_file():
        assert template == (REF / "chat_template.jinja").read_text(encoding="utf-8")
    for cfg in [ASSETS / "tokenizer_config.json", *sorted((ROOT / "weights").glob("demo-*/tokenizer_config.json"))]:
        assert json.loads(cfg.read_text(encoding="utf-8"))["chat_template"] == template, cfg
