"""Walking nested graphs: the bodies of If / Loop / Scan nodes, at any depth."""

from __future__ import annotations

from collections.abc import Iterator

import onnx_graphsurgeon as gs


def node_subgraphs(node: gs.Node) -> list[gs.Graph]:
    """The graph-valued attributes of ``node`` (If branches, Loop / Scan bodies)."""
    found: list[gs.Graph] = []
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            found.append(value)
        elif isinstance(value, list):
            found.extend(v for v in value if isinstance(v, gs.Graph))
    return found


def nested_graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """Every subgraph below ``graph`` (not ``graph`` itself), iteratively: no recursion limit."""
    stack = [sub for node in graph.nodes for sub in node_subgraphs(node)]
    while stack:
        sub = stack.pop()
        yield sub
        stack.extend(s for node in sub.nodes for s in node_subgraphs(node))


def outer_references(graph: gs.Graph) -> set[str]:
    """Names read from inside ``graph``'s subgraphs: they have consumers the graph cannot see."""
    refs: set[str] = set()
    for sub in nested_graphs(graph):
        for node in sub.nodes:
            refs.update(t.name for t in node.inputs if t.name)
        refs.update(t.name for t in sub.outputs)
    return refs
