"""The documentation's examples run: every ```python block of the pages below is executed.

The blocks of one page run in order in one namespace (fresh per page), so a block may use
what an earlier block defined, as a reader would. Each block is one test, named
``<page>-<index>-L<line>`` after its position in the page. Running one block alone
(``-k api.md-5``) runs the blocks before it first; tracebacks point at the page's own
line numbers. Only fences written exactly as ```python at the start of a line run;
```text, ```bash and the like are prose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch

DOCS = Path(__file__).resolve().parent.parent / "docs"
#: Pages whose python blocks are run. Every block of these pages must run on a CPU.
PAGES = ("api.md", "axes.md", "core.md")


class Block(NamedTuple):
    page: str
    index: int
    line: int  # 1-based line of the block's first code line in the page
    code: str


def extract_blocks(page: str) -> list[Block]:
    """The ```python blocks of ``docs/<page>``, in order."""
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    start: int | None = None  # index of the first code line of the open block
    for i, line in enumerate(lines):
        if start is None:
            if line.rstrip() == "```python":
                start = i + 1
            elif line.strip().startswith("```python"):
                raise ValueError(
                    f"docs/{page}:{i + 1}: an indented or annotated ```python fence would not "
                    "be run by tests/test_docs.py: put it at the start of the line, alone"
                )
        elif line.rstrip() == "```":
            blocks.append(Block(page, len(blocks), start + 1, "\n".join(lines[start:i]) + "\n"))
            start = None
    if start is not None:
        raise ValueError(f"docs/{page}:{start}: unclosed ```python block")
    return blocks


BLOCKS = [block for page in PAGES for block in extract_blocks(page)]


@dataclass
class _Run:
    """The state of one page's run: its namespace and how far it got."""

    namespace: dict[str, Any] = field(default_factory=lambda: {"__name__": "__docs__"})
    done: int = 0  # blocks 0 .. done - 1 have run
    failed: int | None = None  # the index of a block that raised
    rng: torch.Tensor | None = None  # the page's torch RNG state between its blocks


_RUNS: dict[str, _Run] = {}


def _execute(run: _Run, block: Block) -> None:
    # Padding with newlines makes tracebacks report the page's line numbers. The page's
    # RNG state is kept apart from the rest of the test session's, so the examples see
    # the same random numbers however the tests are ordered or selected.
    code = compile("\n" * (block.line - 1) + block.code, f"docs/{block.page}", "exec")
    outer = torch.get_rng_state()
    if run.rng is not None:
        torch.set_rng_state(run.rng)
    try:
        exec(code, run.namespace)
    except BaseException:
        run.failed = block.index
        raise
    finally:
        run.rng = torch.get_rng_state()
        torch.set_rng_state(outer)
    run.done = block.index + 1


def test_pages_have_blocks() -> None:
    for page in PAGES:
        assert extract_blocks(page), f"docs/{page} has no ```python block"


def test_api_page_has_no_timings() -> None:
    # Measured figures belong in docs/performance.md, next to how they were measured.
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    found = re.findall(r"\b\d+(?:\.\d+)?\s?(?:µs|us|ms|ns|seconds?)\b", text)
    assert not found, f"timing figures in docs/api.md: {found}"


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.page}-{b.index}-L{b.line}" for b in BLOCKS])
def test_block_runs(block: Block) -> None:
    run = _RUNS.setdefault(block.page, _Run())
    if run.failed is not None and run.failed < block.index:
        pytest.fail(f"an earlier block of docs/{block.page} (index {run.failed}) failed")
    if run.done > block.index:  # already run (a repeated selection): start the page afresh
        run = _RUNS[block.page] = _Run()
    page_blocks = [b for b in BLOCKS if b.page == block.page]
    for earlier in page_blocks[run.done : block.index]:
        _execute(run, earlier)
    _execute(run, block)
