"""The docs' code runs, and their links point at files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: Pages whose Python blocks are run here (other pages' examples are run by their module's tests).
RUN_HERE = [
    "quickstart.md",
    "environment.md",
    "tutorial-gradient-learner.md",
    "tutorial-custom-feeder.md",
    "ppo.md",
    "tutorial-marl-libraries.md",
]
#: Pages that must keep at least this many Python blocks (environment.md: one worked example per part of its spec).
MIN_BLOCKS = {"environment.md": 6}
#: Libraries of the integration extras (installed in CI); a page that needs a missing one is skipped.
OPTIONAL_MODULES = {"supersuit", "stable_baselines3", "torchrl", "ray", "tensordict"}


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def imported_modules(blocks: list[str]) -> set[str]:
    return {m for block in blocks for m in re.findall(r"^(?:from|import) (\w+)", block, flags=re.M)}


def page_param(page: str):
    """A page that drives a third-party learning library (SB3, TorchRL, RLlib) is an integration test."""
    if OPTIONAL_MODULES & imported_modules(python_blocks(DOCS / page)):
        return pytest.param(page, marks=[pytest.mark.integration, pytest.mark.timeout(900)])
    return page


@pytest.mark.parametrize("page", [page_param(p) for p in RUN_HERE])
def test_page_code_runs(page, tmp_path, monkeypatch):
    blocks = python_blocks(DOCS / page)
    assert len(blocks) >= MIN_BLOCKS.get(page, 1), f"{page} has {len(blocks)} Python blocks"
    imported = imported_modules(blocks)
    for module in sorted(OPTIONAL_MODULES & imported):
        pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)  # examples may write files
    namespace = {"__name__": "__docs__"}  # one per page: a tutorial's later blocks build on its earlier ones
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/{page}[{i}]", "exec"), namespace)


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")) + ["../README.md"])
def test_relative_links_resolve(page):
    path = (DOCS / page).resolve()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (path.parent / target).exists(), f"{path.name} links to missing {target}"
