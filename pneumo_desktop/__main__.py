"""`python -m pneumo_desktop ...` is the same as the `pneumo-desktop` command."""

from pneumo_desktop.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
