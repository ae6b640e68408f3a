"""What the main window does, one module per area (as napari's qactions and Anki's per-area operations):

- file_actions.py    File ▸ Open Images / Open Folder / Open Recent / Include Subfolders / Open Model Folder,
                     Help ▸ Open Sample X-rays, drag and drop, the session
- batch_actions.py   File ▸ Score Folder to CSV… / Cancel Scoring (the toolbar's "Score folder")
- site_actions.py    File ▸ Evaluate Labelled Folder… / Calibrate to This Site…
- export_actions.py  File ▸ Export Overlay as PNG… / Export Report as PDF… (written in the background)
- view_actions.py    View ▸ zoom, orientation, invert, overlay, side by side, full screen; Help ▸ Keyboard Shortcuts
- display.py         the image on screen: decode + explain, re-blend, window/level, Score anyway
- model.py           loading the model and applying the active site profile's threshold

Each controller is given the window as a `WindowHost` (host.py): the typed list of what it may use.
"""
