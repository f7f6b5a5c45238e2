"""
Render the docstrings of the public API for integration authors into
C{docs/api-reference.rst}, without Sphinx.

Run from the repository root, after changing a docstring::

    python docs/build_api_reference.py

The modules are L{MODULES}; of each, the names in its C{__all__}. Epytext
markup (C{C{...}}, C{L{...}}, C{I{...}}, C{@raise}) becomes
reStructuredText; Sphinx fields (C{:param x:}) are kept as field lists.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

#: The modules of the public API, in the order of the reference.
MODULES = ("xsoar_lr.api", "xsoar_lr.kvstate", "xsoar_lr.testing")

#: Where the reference is written.
OUTPUT = Path(__file__).resolve().parent / "api-reference.rst"

_MARKUP = {"C": "``{}``", "L": "``{}``", "I": "*{}*", "B": "**{}**"}
_HEADING = re.compile(r"^(=+|-+)$")


def convert_markup(text: str) -> str:
    """
    Turn epytext inline markup into reStructuredText, braces matched so that
    C{{"a": 1}} works.
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] in _MARKUP and text[i + 1 : i + 2] == "{":
            depth, j = 1, i + 2
            while j < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            inner = (
                convert_markup(text[i + 2 : j - 1])
                if text[i] != "C"
                else (text[i + 2 : j - 1])
            )
            out.append(_MARKUP[text[i]].format(inner))
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def convert_docstring(doc: str | None) -> str:
    """
    A docstring as reStructuredText: markup converted, epytext fields made
    Sphinx fields, section underlines demoted below the module's heading.
    """
    if not doc:
        return ""
    lines: list[str] = []
    for line in inspect.cleandoc(doc).splitlines():
        line = re.sub(r"^(\s*)@raise\b", r"\1:raises", line)
        line = re.sub(r"^(\s*)@param\b", r"\1:param", line)
        line = re.sub(r"^(\s*)@return:", r"\1:returns:", line)
        if _HEADING.match(line.strip()) and lines and lines[-1].strip():
            line = "~" * len(lines[-1].strip())
        lines.append(line)
    return convert_markup("\n".join(lines))


def signature(name: str, obj: Any) -> str:
    """
    C{name} with its call signature, when it has one.
    """
    try:
        text = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return name
    # Annotations are strings under "from __future__ import annotations".
    text = re.sub(r"(:|->) '([^']*)'", r"\1 \2", text)
    return name + text.replace("= NOTHING", "= <computed>")


def comment_doc(module: ModuleType, name: str) -> str:
    """
    The C{#:} comment lines just above C{name = ...} in C{module}'s source.
    """
    source = inspect.getsource(module).splitlines()
    for index, line in enumerate(source):
        if re.match(rf"^{re.escape(name)}\s*(:[^=]+)?=", line):
            comments: list[str] = []
            for previous in reversed(source[:index]):
                if not previous.startswith("#:"):
                    break
                comments.insert(0, previous[2:].strip())
            return " ".join(comments)
    return ""


def indent(text: str, by: int = 4) -> str:
    """
    C{text} indented, blank lines kept empty.
    """
    return textwrap.indent(text, " " * by)


def render_members(cls: type) -> list[str]:
    """
    The documented public methods and properties defined on C{cls} itself.
    """
    parts = []
    for member_name, member in vars(cls).items():
        if member_name.startswith("_"):
            continue
        target = member.fget if isinstance(member, property) else member
        if isinstance(target, (staticmethod, classmethod)):
            target = target.__func__
        if not callable(target) or not getattr(target, "__doc__", None):
            continue
        title = (
            f"{member_name} (property)"
            if isinstance(member, property)
            else signature(member_name, target)
        )
        body = convert_docstring(target.__doc__)
        parts.append(f"``{title}``\n{indent(body)}\n")
    return parts


def render_interface(name: str, interface: Any) -> str:
    """
    A zope interface: its attributes and methods with their descriptions.
    """
    parts = [
        f"``{name}`` (interface)\n{indent(convert_docstring(interface.__doc__))}\n"
    ]
    for member_name in interface.names():
        member = interface[member_name]
        doc = convert_docstring(member.getDoc())
        if hasattr(member, "getSignatureString"):
            title = f"{member_name}{member.getSignatureString()}"
        else:
            title = f"{member_name} (attribute)"
        parts.append(indent(f"``{title}``\n{indent(doc)}\n"))
    return "\n".join(parts)


def render_module(module_name: str) -> str:
    """
    One module's section of the reference.
    """
    module = importlib.import_module(module_name)
    heading = f"``{module_name}``"
    parts = [heading, "-" * len(heading), "", convert_docstring(module.__doc__), ""]
    for name in module.__all__:
        obj = getattr(module, name)
        if hasattr(obj, "names") and hasattr(obj, "providedBy"):
            parts.append(render_interface(name, obj))
        elif inspect.isclass(obj):
            body = convert_docstring(obj.__doc__)
            members = render_members(obj)
            block = body + ("\n\n" + "\n".join(members) if members else "")
            parts.append(f"``class {signature(name, obj)}``\n{indent(block)}\n")
        elif callable(obj) and getattr(obj, "__module__", None) == module_name:
            parts.append(
                f"``{signature(name, obj)}``\n"
                f"{indent(convert_docstring(obj.__doc__))}\n"
            )
        else:
            doc = convert_markup(comment_doc(module, name)) or repr(obj)
            parts.append(f"``{name}``\n{indent(doc)}\n")
    return "\n".join(parts)


def render() -> str:
    """
    The whole reference.
    """
    title = "API reference for integration authors"
    head = [
        "=" * len(title),
        title,
        "=" * len(title),
        "",
        ".. This file is generated from the docstrings by docs/build_api_reference.py;",
        "   edit the docstrings and run ``python docs/build_api_reference.py``.",
        "",
        ".. contents::",
        "   :local:",
        "   :depth: 1",
        "",
    ]
    body = [render_module(name) for name in MODULES]
    text = "\n".join(head) + "\n" + "\n\n".join(body)
    return re.sub(r"[ \t]+\n", "\n", text).rstrip() + "\n"


def main() -> None:
    """
    Write the reference and say where.
    """
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    OUTPUT.write_text(render(), "utf-8")
    print(f"Wrote {OUTPUT}")


if __name__ == "__main__":
    main()
