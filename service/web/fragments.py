"""``{% cache key %}...{% endcache %}``: a template fragment rendered once per key.

The fragment cache extension from Jinja's own documentation, kept in process memory. The
key must name everything the fragment reads (the status frame's cards: the frozen numbers
and the window), so a kept rendering is exactly what rendering again would produce; the
time-dependent parts of a page (relative times, the server's clock) stay outside the block.
"""

from __future__ import annotations

from typing import Any, Callable

from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.parser import Parser
from markupsafe import Markup

MAX_FRAGMENTS = 4096  # renderings kept: a few per active analyst


class FragmentCache(Extension):
    tags = {"cache"}

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self.kept: dict[Any, Markup] = {}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        key = parser.parse_expression()
        body = parser.parse_statements(("name:endcache",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render", [key]), [], [], body).set_lineno(lineno)

    def _render(self, key: Any, caller: Callable[[], Markup]) -> Markup:
        text = self.kept.get(key)
        if text is None:
            text = caller()
            if len(self.kept) >= MAX_FRAGMENTS:
                self.kept.clear()
            self.kept[key] = text
        return text
