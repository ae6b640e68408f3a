"""The wording of errors in the GUI: how an exception becomes one sentence for a person, and the help
texts that go with it. Every place in the GUI that shows an error takes its words from here."""

from __future__ import annotations

import re

from ..core.errors import PneumoError

MODEL_HELP = (
    "What to do: reinstall Pneumo Desktop so that its bundled model folder (resources/model) is "
    "complete, or choose a valid model folder with File ▸ Open Model Folder…. You can still open "
    "and view images; predictions stay off until a model is loaded."
)
BATCH_FAILED_HELP = "Rows written before the error are kept; run it again and choose Resume."
REFUSED_EXPORT_HELP = "There is no result to export. Use Score anyway first if you need one."


_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def describe_error(exc: BaseException) -> str:
    """One sentence for a person: the project's errors (PneumoError) carry `.reason`; others get their message.

    Library messages that quote Python object reprs ("cannot identify image file <_io.BytesIO object
    at 0x...>") lose the repr: it means nothing to a person.
    """
    text = exc.reason if isinstance(exc, PneumoError) and exc.reason else str(exc).strip()
    text = _OBJECT_REPR.sub("", text).replace(" ()", "").strip()
    return text or type(exc).__name__
