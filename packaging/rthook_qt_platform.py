"""PyInstaller runtime hook (runs before the app's code in the frozen executable).

The Linux package ships Qt's xcb platform plugin (X11, and XWayland on Wayland desktops) but not the
native Wayland one (see pyinstaller.spec). On a Wayland session Qt would first look for the missing
"wayland" plugin and print a warning before falling back to xcb; choosing xcb up front skips that.
An explicit QT_QPA_PLATFORM (offscreen, minimal, xcb) is always respected.
"""

import os
import sys

if sys.platform.startswith("linux"):
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
