"""`python -m pneumo_desktop.cli` = `pneumo-desktop`."""

from .dispatch import main

raise SystemExit(main())
