"""`python -m pneumo_desktop.cli` = `pneumo-desktop`."""

from .dispatch import main

if __name__ == "__main__":  # not on import (tests import every module)
    raise SystemExit(main())
