"""The Python snippets of docs/client.md and of the README's "Calling Legato from a service", run in
order against a real stack: the documentation of the client cannot drift from what it does."""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

import pytest

from legato.config.settings import Settings
from tests.support.auth import creds_for
from tests.support.stack import running_stack

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a Markdown text, in order."""
    return [m.group(1) for m in _BLOCK.finditer(text)]


def readme_section(title: str) -> str:
    """One ``## title`` section of the README."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


async def run_blocks(blocks: list[str], source: str) -> str:
    """Run the blocks in one namespace (top-level ``await`` allowed, as in a notebook); their output."""
    namespace: dict[str, object] = {"__name__": "__docs__"}
    out = io.StringIO()
    for i, block in enumerate(blocks):
        code = compile(block, f"{source}[{i}]", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        with contextlib.redirect_stdout(out):
            result = eval(code, namespace)  # our own documentation, run as a reader would
            if result is not None:
                await result
    return out.getvalue()


def test_the_docs_have_snippets() -> None:
    assert len(python_blocks((ROOT / "docs/client.md").read_text())) >= 9
    assert python_blocks(readme_section("Calling Legato from a service"))


@pytest.fixture
def docs_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the snippets read: the stack's NATS URL and namespace, and an operator's seed file."""
    monkeypatch.setenv("LEGATO_NATS_URL", settings.nats_url)
    monkeypatch.setenv("LEGATO_NAMESPACE", settings.namespace)
    admin = creds_for("admin")
    if admin is not None:  # the docs push a workflow: an admin identity
        monkeypatch.setenv("LEGATO_NATS_CREDS", admin)


async def test_docs_client_md_snippets_run(settings: Settings, tmp_path: Path, docs_env: None) -> None:
    async with running_stack(settings, tmp_path):
        printed = await run_blocks(python_blocks((ROOT / "docs/client.md").read_text()), "docs/client.md")
    assert "daily-sales 1 True" in printed
    assert "not_found - " in printed
    assert "quick ended: succeeded" in printed  # wait() on the end event, typed
    assert "['succeeded'] 4" in printed  # subscribe_runs from the stream's start


async def test_readme_client_snippets_run(settings: Settings, tmp_path: Path, docs_env: None) -> None:
    async with running_stack(settings, tmp_path):
        await run_blocks(python_blocks(readme_section("Calling Legato from a service")), "README.md")
