"""The wording of errors in the GUI: how an exception becomes one sentence for a person, and the help
texts that go with it. Every place in the GUI that shows an error takes its words from here."""

from __future__ import annotations

from ..core.messages import describe_error as describe_error  # the one scrubbing helper, in core

MODEL_HELP = (
    "What to do: reinstall Pneumo Desktop so that its bundled model folder (resources/model) is "
    "complete, or choose a valid model folder with File ▸ Open Model Folder…. You can still open "
    "and view images; predictions stay off until a model is loaded."
)
BATCH_FAILED_HELP = "Rows written before the error are kept; run it again and choose Resume."
REFUSED_EXPORT_HELP = "There is no result to export. Use Score anyway first if you need one."
