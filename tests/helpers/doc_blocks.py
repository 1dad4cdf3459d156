"""Run the Python blocks of a Markdown document as one script, as a reader would."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

#: The server URL the documents use; tests put their own server's URL in its place.
DOC_URL = "http://127.0.0.1:8765"


def python_blocks(markdown: str) -> list[str]:
    """The ```python fenced blocks of ``markdown``, in order."""
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


def run_blocks(blocks: Sequence[str], *, filename: str, server_url: str) -> dict[str, Any]:
    """Run ``blocks`` in order in one namespace, the documents' URL replaced by ``server_url``;
    returns the namespace."""
    namespace: dict[str, Any] = {"__name__": filename}
    for block in blocks:
        code = block.replace(DOC_URL, server_url)
        # dont_inherit: not the caller's `from __future__ import annotations` (a script has none)
        exec(compile(code, filename, "exec", dont_inherit=True), namespace)  # noqa: S102 - our own docs
    return namespace
