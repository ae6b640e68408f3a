"""PySide6 desktop interface: a thin layer over `pneumo_desktop.core`.

The GUI never imports TensorFlow or the trainer; every heavy call into the core (model loading,
decoding, inference + Grad-CAM, batch scoring) runs in a worker of a QThreadPool.
Entry point: `pneumo_desktop.gui.app.run_gui`.
"""
