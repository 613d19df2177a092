"""griffe extensions for the API reference (mkdocstrings loads them: ``mkdocs.yml``).

:class:`PackageDir` -- the build's ``package_dir`` mapping.

``strategies/`` and ``streams/`` install as ``streamkd.strategies`` and ``streamkd.streams``
(``setup.py``'s ``ROOTS``). griffe reads sources statically and finds ``streamkd`` in
``streamkd/`` only, so ``::: streamkd.strategies.er`` would not resolve. When the
``streamkd`` package has loaded, this extension loads each mapped folder (with its
submodules) and attaches it under its dotted name. The mapping is read from ``setup.py``,
so a new mapped folder needs no change here.

:class:`PlainText` -- the docstrings are written as plain text with Sphinx-style roles, not as
Markdown. A role (``:class:`~streamkd.drift.DriftMonitor```) is shown as a code span of its
target (``DriftMonitor``), and an index such as ``A[T'-1][j]`` outside a code span, which
Markdown would read as a reference link to ``j`` (a missing cross-reference: the strict
build fails), has its brackets escaped. Prose lines only: code spans and indented code are
left alone. Writing the formula in a code span in the docstring makes the escape a no-op. The
``Args:`` blocks of the ``__init__`` docstrings list ``name: help`` lines unindented (the
format ``streamkd.strategy`` reads for ``streamkd strategies --verbose``); they are indented
here so that the Google-style parser renders them as a parameter table.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import griffe

ROOT = Path(__file__).resolve().parents[1]


def package_dirs(setup_py: Path = ROOT / "setup.py") -> dict[str, Path]:
    """``setup.py``'s ``ROOTS``: dotted package name -> folder (the top package excluded)."""
    for node in ast.parse(setup_py.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "ROOTS" for t in node.targets
        ):
            roots = ast.literal_eval(node.value)
            return {name: ROOT / folder for name, folder in roots.items() if "." in name}
    raise LookupError(f"no ROOTS mapping in {setup_py}")


class PackageDir(griffe.Extension):
    """Attach ``streamkd.strategies`` and ``streamkd.streams`` to the loaded ``streamkd``."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for dotted, folder in package_dirs().items():
            parent_path, _, name = dotted.rpartition(".")
            if parent_path.split(".", 1)[0] != pkg.name or not (folder / "__init__.py").exists():
                continue
            parent = pkg if parent_path == pkg.name else pkg[parent_path.split(".", 1)[1]]
            if name in parent.members and parent.members[name].is_module:
                continue
            module = loader._load_module(name, folder / "__init__.py", parent=parent)
            parent.set_member(name, module)


_ROLE = re.compile(r":(?:py:)?[a-z]+:`~?([^`]+)`")
_CODE_SPAN = re.compile(r"(`+).*?\1")
_ARG_ITEM = re.compile(r"^\w+: ")
_LITERAL_MARK = re.compile(r"(?m)(\S)::$")
_REFERENCE = re.compile(r"\](\[[^\]\s`]*\])")


def plain_text(text: str) -> str:
    """``text`` as Markdown: roles as code spans, ``Args:`` items indented, ``text::`` as
    ``text:``, and each ``][id]`` on a prose line escaped to ``]\\[id]`` (code left alone)."""
    text = indent_args(_ROLE.sub(_role_target, text))
    text = _LITERAL_MARK.sub(r"\1:", text)  # reST's "text::" before an indented block
    lines = []
    for line in text.splitlines(keepends=True):
        if line.startswith("    ") or "][" not in line:
            lines.append(line)
            continue
        parts, last = [], 0
        for span in _CODE_SPAN.finditer(line):
            parts.append(_REFERENCE.sub(r"]\\\1", line[last : span.start()]))
            parts.append(span.group(0))
            last = span.end()
        parts.append(_REFERENCE.sub(r"]\\\1", line[last:]))
        lines.append("".join(parts))
    return "".join(lines)


def indent_args(text: str) -> str:
    """An ``Args:`` block whose items are not indented, indented (up to a blank line)."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        out.append(lines[i])
        i += 1
        if out[-1] == "Args:" and i < len(lines) and _ARG_ITEM.match(lines[i]):
            while i < len(lines) and lines[i].strip():
                out.append("    " + lines[i])
                i += 1
    return "\n".join(out)


def _role_target(match: re.Match[str]) -> str:
    target = match.group(1)
    if match.group(0).split("`", 1)[1].startswith("~"):
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


class PlainText(griffe.Extension):
    """In every docstring: roles as code spans, ``Args:`` blocks indented, reST's ``::`` as
    ``:``, Markdown reference brackets escaped."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        _rewrite_tree(pkg, set())


def _rewrite_tree(obj: griffe.Object, seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if obj.docstring is not None:
        obj.docstring.value = plain_text(obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _rewrite_tree(member, seen)
