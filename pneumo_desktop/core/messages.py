"""Messages fit for a person: the one place that scrubs library noise out of error text.

Both the core (ImageLoadError's reason) and the GUI (describe_error) use it, so a message reads the same in
the CSV, on the terminal and in the window.
"""

from __future__ import annotations

import re

from pneumo_desktop.core.errors import PneumoError

# Python's repr of objects ("<_io.BytesIO object at 0x7f...>") leaks into some decoder messages ("cannot
# identify image file <_io.BytesIO object at 0x...>"); it changes every run and means nothing to a person.
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def clean_reason(text: str) -> str:
    """A library message fit for a person: one line, no object reprs (nor the empty brackets they leave)."""
    text = _OBJECT_REPR.sub("", text).replace(" ()", "")
    return " ".join(text.split())


def describe_error(exc: BaseException) -> str:
    """One sentence for a person: the project's errors (PneumoError) carry `.reason`; others get their message."""
    text = exc.reason if isinstance(exc, PneumoError) and exc.reason else str(exc)
    return clean_reason(text) or type(exc).__name__
