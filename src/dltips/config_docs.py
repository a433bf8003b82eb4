"""docs/configuration.md's key tables, generated from the schema (dltips.schema).

Each table sits between `<!-- schema: NODE -->` (NODE: model, trainer, ...; top: the top
level's own keys) and `<!-- end schema -->`; the prose around it is hand-written.
scripts/config_docs.py writes or checks the file.
"""

import dataclasses
import json
import re
import typing
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from dltips.schema import is_node, nodes

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
BLOCK = re.compile(r"(<!-- schema: (\S*) -->\n).*?(<!-- end schema -->)", re.DOTALL)


def _type(annotation: object) -> str:
    """int, float | null, any: a field's type as the table shows it."""
    if annotation is Any:
        return "any"
    args = typing.get_args(annotation)
    if args:
        return " \\| ".join("null" if a is type(None) else a.__name__ for a in args)
    return annotation.__name__


def _default(f: dataclasses.Field) -> str:
    if f.default is MISSING:
        return "per option"
    value = list(f.default) if isinstance(f.default, tuple) else f.default
    return f"`{value if isinstance(value, str) else json.dumps(value)}`"


def table(node: str) -> str:
    """The markdown table of the keys under `node` ('' for the top level's own keys)."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, f in nodes():
        parent = key.rpartition(".")[0]
        inside = parent == node or parent.startswith(f"{node}.") if node else not parent
        if not inside or dataclasses.is_dataclass(f.type):
            continue  # a node's keys have their own rows
        if not node and is_node(f) and f.metadata.get("node") is not True:
            continue  # a group: its own table
        doc = f.metadata["doc"].replace("|", "\\|")
        rows.append(f"| `{key}` | {_type(f.type)} | {_default(f)} | {doc} |")
    return "\n".join(rows) + "\n"


def render(text: str) -> str:
    """`text` (docs/configuration.md) with every schema table generated anew."""
    return BLOCK.sub(lambda m: m[1] + table("" if m[2] == "top" else m[2]) + m[3], text)
