"""The README's "Gauss as a library" example runs as written."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def library_example() -> str:
    text = README.read_text()
    section = text[text.index("## Gauss as a library") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python code block in the README section"
    return match.group(1)


def test_readme_library_example_runs() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(library_example(), "README.md", "exec"), {})
    first_seq, close, last_seq = out.getvalue().split()
    assert first_seq == "1" and last_seq == "3"
    assert abs(float(close) - (1.0852 + 1.0854) / 2) < 1e-9
