"""The docs cannot drift from the code: the state diagram in docs/production.md is the
machine's transition table, edge for edge, and docs/config.md names every setting."""

from __future__ import annotations

import re
from pathlib import Path

from retro.config import Settings
from retro.machine import NEW, TRANSITIONS, State

ROOT = Path(__file__).resolve().parents[2]
START = "[*]"
EDGE = re.compile(r"^(?P<source>\S+)\s*-->\s*(?P<dest>\S+)\s*:\s*(?P<triggers>.+)$")

Edge = tuple[str, str, str]


def mermaid_state_diagrams(markdown: str) -> list[list[str]]:
    """The lines of every ```mermaid block that is a stateDiagram-v2."""
    blocks = re.findall(r"^```mermaid\n(.*?)^```", markdown, flags=re.M | re.S)
    diagrams = []
    for block in blocks:
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if lines and lines[0] == "stateDiagram-v2":
            diagrams.append(lines[1:])
    return diagrams


def diagram_edges(lines: list[str]) -> set[Edge]:
    """``(source, trigger, dest)`` of every ``a --> b: T1, T2`` line; ``[*]`` as a
    source is the machine's pseudo-state ``new``. Any other line fails the test."""
    edges: set[Edge] = set()
    for line in lines:
        found = EDGE.match(line)
        assert found, f"not an edge with its trigger(s): {line!r}"
        source = NEW if found["source"] == START else found["source"]
        for trigger in found["triggers"].split(","):
            edge = (source, trigger.strip(), found["dest"])
            assert edge not in edges, f"edge drawn twice: {edge}"
            edges.add(edge)
    return edges


def table_edges() -> set[Edge]:
    """``(source, trigger, dest)`` of the transition table; no dest means a self-loop."""
    edges: set[Edge] = set()
    for transition in TRANSITIONS:
        source = transition["source"]
        sources = source if isinstance(source, list) else [source]
        for state in sources:
            dest = transition["dest"]
            edges.add(
                (str(state), str(transition["trigger"]), str(state if dest is None else dest))
            )
    return edges


def test_the_production_diagram_is_the_transition_table() -> None:
    diagrams = mermaid_state_diagrams((ROOT / "docs" / "production.md").read_text("utf-8"))
    assert len(diagrams) == 1
    drawn = diagram_edges(diagrams[0])
    table = table_edges()
    assert drawn == table, (
        f"missing from the diagram: {sorted(table - drawn)}; "
        f"not in the table: {sorted(drawn - table)}"
    )
    states = {source for source, _, _ in drawn} | {dest for _, _, dest in drawn}
    assert states == {NEW, *(str(s) for s in State)}


def test_the_readme_diagram_draws_only_real_transitions() -> None:
    """The README shows the main path only; each of its edges must exist in the table."""
    diagrams = mermaid_state_diagrams((ROOT / "README.md").read_text("utf-8"))
    assert len(diagrams) == 1
    edges = diagram_edges([line for line in diagrams[0] if not line.endswith(f"--> {START}")])
    assert edges, "no edge read from the README's diagram"
    assert edges <= table_edges(), sorted(edges - table_edges())


def test_the_edge_parser_sees_a_wrong_diagram() -> None:
    wrong = diagram_edges(["[*] --> pending: RunSeeded", "pending --> done: RunCompleted"])
    assert not wrong <= table_edges()


def test_config_md_documents_every_setting() -> None:
    text = (ROOT / "docs" / "config.md").read_text("utf-8")
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", text, flags=re.M))
    assert rows == set(Settings.model_fields)


def test_the_unreadable_kickoff_index_reads_as_the_scans_predicate() -> None:
    """The partial index in docs/production.md is only used if its predicate is the
    scan's own (gaps.UNREADABLE_KICKOFF_SQL), up to line breaks."""
    from retro.store.gaps import UNREADABLE_KICKOFF_SQL

    doc = (ROOT / "docs" / "production.md").read_text()
    found = re.search(r"ix_matches_unreadable_kickoff ON matches \(id\)\s+WHERE (.*?);", doc, re.S)
    assert found, "docs/production.md lost the unreadable-kickoff index"
    assert " ".join(found[1].split()) == " ".join(UNREADABLE_KICKOFF_SQL.split())
