"""Entry script of the packaged app (PyInstaller runs this file as __main__).

It only forwards to `pneumo_desktop.cli:main`, the same function the `pneumo-desktop` console script
calls, so the frozen executable serves the GUI (no arguments) and the CLI (`score`, `predict`,
`--version`, `--self-test`) exactly like an installed package.

`multiprocessing.freeze_support()` runs first, before anything heavy is imported: if a library ever
starts a worker process with the "spawn" method (the only method on Windows and macOS), the child is
this same executable started with multiprocessing's own arguments; freeze_support() recognises them,
runs the worker and exits instead of opening a second GUI. It is a no-op otherwise (and the CLI's
main may call it again, which is harmless).
"""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()

    from pneumo_desktop.cli import main

    sys.exit(main())
