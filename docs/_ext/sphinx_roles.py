"""A griffe extension for the API reference (mkdocs.yml, mkdocstrings' ``extensions``).

The docstrings of databuffer are Google style with reStructuredText roles in
the text (``:class:`FlushOpts```, ``:meth:`sync_flush```,
``:func:`set_exit_timeout```), which Markdown would show as they are. Each
role becomes a mkdocstrings cross-reference when its target is one of the
objects the reference pages render, and inline code otherwise.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|data|attr|exc|mod|obj):`(~?)([A-Za-z_][\w.]*)`")


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles into cross-references or inline code."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "databuffer":
            return
        targets = _Targets(pkg)
        for obj in _walk(pkg):
            docstring = obj.docstring
            if docstring is not None and ":" in docstring.value:
                docstring.value = _ROLE.sub(lambda m, obj=obj: targets.link(obj, m[1], m[2]), docstring.value)


class _Targets:
    """The objects rendered in the API reference, by the names a docstring uses for them."""

    def __init__(self, pkg: griffe.Module) -> None:
        # Attributes such as USING_EXTENSION are described in prose, not rendered.
        self.public = {name for name in _public(pkg) if _kind(pkg[name]) in ("class", "function", "module")}
        self.buffer = {name for name in pkg["Buffer"].final_target.all_members if not name.startswith("_")}
        self.async_buffer = {
            name for name in pkg["AsyncBuffer"].final_target.all_members if not name.startswith("_")
        }
        self.modules = {
            "telemetry": _public(pkg["telemetry"]),
        }
        for contrib in ("otel", "logging"):
            if "contrib" in pkg.members and contrib in pkg["contrib"].members:
                self.modules[f"contrib.{contrib}"] = _public(pkg[f"contrib.{contrib}"])

    def path(self, context: griffe.Object, name: str) -> str | None:
        name = name.removeprefix("databuffer.")
        head, _, rest = name.partition(".")
        if name in self.public:
            return f"databuffer.{name}"
        if head == "Buffer" and rest in self.buffer:
            return f"databuffer.{name}"
        if head == "AsyncBuffer" and rest in self.async_buffer:
            return f"databuffer.{name}"
        where = context.path
        if name in self.async_buffer and where.startswith(
            ("databuffer._async.AsyncBufferMethods", "databuffer._async.AsyncBuffer", "databuffer._front")
        ):
            return f"databuffer.AsyncBuffer.{name}"
        if name in self.buffer and any(
            where.startswith(cls)
            for cls in (
                "databuffer._buffer.BufferMethods",
                "databuffer._buffer.Buffer",
                "databuffer._front",
                "databuffer._core_py",
            )
        ):
            return f"databuffer.Buffer.{name}"
        for module, names in self.modules.items():
            if name == module or (name.startswith(f"{module}.") and name[len(module) + 1 :] in names):
                return f"databuffer.{name}"
            if where.startswith(f"databuffer.{module}") and head in names:
                return f"databuffer.{module}.{name}"
        return None

    def link(self, context: griffe.Object, tilde: str, name: str) -> str:
        shown = name.rpartition(".")[2] if tilde else name
        target = self.path(context, name)
        return f"`{shown}`" if target is None else f"[`{shown}`][{target}]"


def _public(module: griffe.Object) -> set[str]:
    return {name for name in module.members if not name.startswith("_")}


def _kind(obj: griffe.Object | griffe.Alias) -> str:
    try:
        return obj.kind.value
    except griffe.AliasResolutionError:  # imported from outside the package
        return ""


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    """``obj`` and every object defined in it (not imported), depth first."""
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            found.extend(_walk(member))  # type: ignore[arg-type]
    return found
