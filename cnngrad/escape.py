"""User strings made safe where they are shown: the terminal, XML, markdown, file names.

A config's name, a layer's class, a parameter's name, a path or a plugin's error message is
data, never markup or control: ``name: "[/oops]"`` must print as itself, an ANSI escape in a
name must not recolour (or retitle, or clear) the terminal, a control character must not
make a JUnit file invalid XML, a ``|`` must not split a markdown cell, and ``../../x`` must
not take a file out of its folder.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich is imported where a Text is made: a JSON report never loads it
    from rich.text import Text

# C0 and C1 controls, DEL, line/paragraph separators and the bidirectional overrides
# (which reorder what a terminal or a code review shows: "trojan source")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# what XML 1.0 forbids: the complement of \t \n \r, U+0020–U+D7FF, U+E000–U+FFFD, U+10000 up, spelled
# out (the negated class takes 8 ms to compile, at every start)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_NOT_IN_FILE_NAME = re.compile(r"[^A-Za-z0-9._+-]+")


def _shown(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object) -> str:
    """``str(value)`` with every control character written out as an escape (ESC as ``\\x1b``,
    a newline as ``\\x0a``): one line, nothing the terminal would act on."""
    return _CONTROL.sub(lambda m: _shown(m.group()), str(value))


def text(value: object, style: str = "") -> Text:
    """A rich ``Text`` of a user string: printed as it is, never read as ``[markup]``."""
    from rich.text import Text

    return Text(printable(value), style=style)


def xml(value: str) -> str:
    """A string XML 1.0 can hold: each character it forbids written out as an escape."""
    return _NOT_XML.sub(lambda m: _shown(m.group()), value)


def markdown(value: object) -> str:
    """A markdown table cell: one line, ``|`` escaped, no raw HTML."""
    return (printable(value).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
            .replace(">", "&gt;").replace("`", "\\`"))


def file_name(value: object, limit: int = 80) -> str:
    """A file name made from a user string: letters, digits and ``._+-`` only, no leading dot
    (no ``..``, no hidden file, no separator), at most ``limit`` characters."""
    name = _NOT_IN_FILE_NAME.sub("_", str(value)).lstrip(".")[:limit].strip("._")
    return name or "config"
