"""Reading YAML that a user (or an attacker) wrote: `safe_load` with bounded size and depth.

`yaml.safe_load` constructs no Python objects, but it still accepts a document of a few
hundred bytes whose aliases expand into a billion nodes ("billion laughs": anything that
walks the result, a merge, a deepcopy, a check, then takes hours and gigabytes), and nesting
deep enough that PyYAML's recursive composer dies with a RecursionError traceback. `safe_load`
here refuses both with a `yaml.YAMLError` carrying `problem` and `problem_mark`, the form every
caller already turns into its one-line "malformed YAML" message.

PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: `1e12` and `1.5e3`
are read as the strings '1e12' and '1.5e3', so a scenario's `duration: 3e1` was refused as
"must be a number, got '3e1'" (and a bound was never checked). `safe_load` reads them as
numbers, as YAML 1.2 and JSON do.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.nodes import MappingNode, Node, SequenceNode

__all__ = ["MAX_YAML_DEPTH", "MAX_YAML_NODES", "safe_load"]

#: Nesting of collections; a scenario or a flow needs fewer than ten.
MAX_YAML_DEPTH = 64
#: Nodes after expanding every alias; the largest shipped scenario has a few hundred.
MAX_YAML_NODES = 200_000


class _BoundedLoader(yaml.SafeLoader):  # type: ignore[misc,unused-ignore]  # no stubs here
    """A SafeLoader whose composer counts depth and, per document, the expanded node count,
    and which reads `1e12` (an exponent with no dot) as a float."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise ComposerError(
                    None,
                    None,
                    f"nested more than {MAX_YAML_DEPTH} levels deep",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Node | None:
        node = super().compose_document()
        if node is not None:
            _check_size(node)
        return node


# A plain scalar such as `1e12`, `-3E-2`, `5e+0` or `1.5e3`: YAML 1.1's float pattern wants a
# dot and a signed exponent (`1.5e+3`), so these were strings.
# (add_implicit_resolver copies the SafeLoader's table before adding: SafeLoader is unchanged.)
_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def _check_size(root: Node) -> None:
    """Refuse a document whose aliases expand past MAX_YAML_NODES, or refer to themselves
    (`&a [*a]`, which PyYAML builds as a cycle), counted without expanding: each node's
    expanded size once, by identity, over the alias graph."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    # Post-order over an explicit stack: no recursion, whatever the shape.
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not expanded:
            if id(node) in open_:
                raise ComposerError(None, None, "an alias refers to itself", node.start_mark)
            open_.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        total = 1 + sum(sizes[id(child)] for child in children)
        if total > MAX_YAML_NODES:
            raise ComposerError(
                None,
                None,
                f"expands to more than {MAX_YAML_NODES:,} values (aliases repeating aliases)",
                node.start_mark,
            )
        sizes[id(node)] = total


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def safe_load(text: str) -> Any:
    """`yaml.safe_load(text)`, refusing (yaml.YAMLError) a document nested more than
    MAX_YAML_DEPTH deep or expanding to more than MAX_YAML_NODES nodes."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:  # a shape the depth bound did not foresee: still one line
        raise ComposerError(None, None, "nested too deeply", None) from None
    finally:
        loader.dispose()
