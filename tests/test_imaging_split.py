"""core.imaging split by job: importing it changes nothing process-wide; one message-scrubbing helper."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_importing_imaging_sets_no_warning_filters_or_logger_levels() -> None:
    code = (
        "import logging, warnings\n"
        "import numpy, PIL.Image  # their own import-time filters are not ours\n"
        "before = list(warnings.filters)\n"
        "import pneumo_desktop.core.imaging, pneumo_desktop.core.batch\n"
        "assert warnings.filters == before, [f for f in warnings.filters if f not in before]\n"
        "assert logging.getLogger('pydicom').level == logging.NOTSET\n"
        "assert logging.getLogger('PIL').level == logging.NOTSET\n"
        "print('clean')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "clean"


def test_decoding_leaves_no_warning_filter_behind(tmp_path: Path) -> None:
    import warnings

    import numpy as np
    from PIL import Image

    from pneumo_desktop.core.imaging import load_image

    path = tmp_path / "x.png"
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(path)
    before = list(warnings.filters)
    load_image(path)
    assert list(warnings.filters) == before


def test_one_scrubbing_helper_for_core_and_gui() -> None:
    from pneumo_desktop.core import messages
    from pneumo_desktop.core.imaging import CorruptImageError
    from pneumo_desktop.gui import error_text

    assert error_text.describe_error is messages.describe_error
    error = CorruptImageError("/x/a.png", "cannot identify image file <_io.BytesIO object at 0x7f00aa>\n(PNG)")
    assert error.reason == "cannot identify image file (PNG)"
    assert messages.describe_error(ValueError("bad <foo.Bar object at 0xdeadbeef> value ()")) == "bad value"
