"""docs/architecture.md's "Features by backend" table is the features the backends declare, so it cannot drift.

When a backend gains a feature, regenerate the table with
``PYTHONPATH=src python tests/backends/test_features_doc.py`` (it rewrites the block between the markers).
"""

from __future__ import annotations

import re
from pathlib import Path

from attnlab.backends import BACKENDS, FEATURES

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
START, END = "<!-- features-table:start -->", "<!-- features-table:end -->"


def features_table() -> str:
    """The markdown table: one row per registered backend, one column per feature of FEATURES."""
    lines = [
        "| backend | " + " | ".join(f"`{feature}`" for feature in FEATURES) + " |",
        "|---" * (len(FEATURES) + 1) + "|",
    ]
    for name, backend in BACKENDS.items():
        cells = ["yes" if feature in backend.features else "-" for feature in FEATURES]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


BLOCK = re.compile(re.escape(START) + r"(.*?)" + re.escape(END), flags=re.DOTALL)


def documented_table(text: str) -> str:
    match = BLOCK.search(text)
    assert match, f"{DOC} lacks the {START} ... {END} block"
    return match.group(1).strip()


def test_doc_table_equals_declared_features():
    expected = features_table()
    assert documented_table(DOC.read_text()) == expected, (
        f"docs/architecture.md is stale: run PYTHONPATH=src python tests/backends/test_features_doc.py\n{expected}"
    )


if __name__ == "__main__":
    text = DOC.read_text()
    documented_table(text)  # the markers must be there
    DOC.write_text(BLOCK.sub(lambda _: f"{START}\n{features_table()}\n{END}", text))
