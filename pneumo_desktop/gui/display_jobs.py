"""Display work for the image on screen: decode + explain, and re-blend, each latest-request-wins.

Selection changes and slider drags never block the GUI thread and never queue work behind each
other: one task runs, the newest request waits in a single slot, anything older is dropped.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QObject, QThreadPool, Signal
from PySide6.QtGui import QImage

from ..core.overlay import render_overlay
from .background import LatestOnly
from .error_text import describe_error
from .image_view import array_to_qimage
from .options import OverlayOptions, WindowLevel, apply_window_level

if TYPE_CHECKING:
    from ..core.imaging import LoadedImage
    from ..core.runtime import Explanation, PneumoniaModel

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Display requests: decode + explain the image on screen, latest request wins
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CachedResult:
    image: LoadedImage
    explanation: Explanation | None


class ResultCache:
    """Small thread-safe LRU of decoded images and their explanations (revisits are instant)."""

    def __init__(self, capacity: int = 6) -> None:
        self._capacity = capacity
        self._items: OrderedDict[tuple[str, int, int], CachedResult] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(path: Path) -> tuple[str, int, int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        # mtime and size in the key: an image edited on disk is decoded again.
        return (str(path.absolute()), stat.st_mtime_ns, stat.st_size)

    def get(self, path: Path) -> CachedResult | None:
        key = self.key(path)
        with self._lock:
            if key is None or key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, path: Path, result: CachedResult) -> None:
        key = self.key(path)
        if key is None:
            return
        with self._lock:
            self._items[key] = result
            self._items.move_to_end(key)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def _is_image_error(exc: BaseException) -> bool:
    from ..core.imaging import ImageLoadError

    return isinstance(exc, ImageLoadError)


class LatestImageRequester(QObject):
    """Decode + explain the image on screen, latest request wins (see background.LatestOnly).

    A selection change never blocks and never queues work behind another: a request passed over
    while another runs is dropped without running, and a running one that became stale skips its
    remaining stages.
    """

    imageReady = Signal(object)  # LoadedImage of the current request
    explanationReady = Signal(object)  # Explanation of the current request
    failed = Signal(object, str)  # path, message (current request only)
    dropped = Signal(object)  # path of a superseded request

    def __init__(self, pool: QThreadPool, parent: QObject | None = None, cache_size: int = 6) -> None:
        super().__init__(parent)
        self._latest = LatestOnly(pool, self)
        self._model: PneumoniaModel | None = None
        self._cache = ResultCache(cache_size)
        self._current_path: Path | None = None

    @property
    def generation(self) -> int:
        return self._latest.generation

    @property
    def current_path(self) -> Path | None:
        return self._current_path

    @property
    def busy(self) -> bool:
        return self._latest.busy

    def set_model(self, model: PneumoniaModel | None) -> None:
        self._model = model
        self._cache.clear()  # explanations belong to the model that made them

    def request(self, path: Path) -> int:
        path = Path(path)
        self._current_path = path
        model, cache = self._model, self._cache

        def work(is_current: Callable[[], bool], progress: Callable[[object], None]) -> object:
            # A request that became stale while waiting costs nothing: checked before each stage.
            if not is_current():
                return None
            cached = cache.get(path)
            if cached is None:
                from ..core.imaging import load_image

                cached = CachedResult(load_image(path), None)
                cache.put(path, cached)
            if not is_current():
                return None
            progress(cached.image)
            if model is None or not is_current():
                return None
            if cached.explanation is None:
                from ..core import scoring_log
                from ..core.explanation_audit import with_body_share

                explained = with_body_share(scoring_log.shown(model.explain(cached.image)), cached.image.grey)
                cached = CachedResult(cached.image, explained)  # logged once
                cache.put(path, cached)
            return cached.explanation

        def on_result(explanation: object) -> None:
            if explanation is None:
                if self._model is not None:
                    self.dropped.emit(path)
                return
            self.explanationReady.emit(explanation)

        def on_error(exc: BaseException) -> None:
            if not _is_image_error(exc):
                log.error("unexpected error while reading %s: %r", path, exc)
            self.failed.emit(path, describe_error(exc))

        return self._latest.request(
            work,
            on_result=on_result,
            on_error=on_error,
            on_progress=self.imageReady.emit,
            on_dropped=lambda: self.dropped.emit(path),
        )

    def cancel(self) -> None:
        """Forget the current request (e.g. the list was cleared)."""
        self._current_path = None
        self._latest.cancel()


# ---------------------------------------------------------------------------------------------
# Display rendering: window/level + overlay blend off the GUI thread, latest request wins
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RenderJob:
    grey: np.ndarray  # the decoded image (never modified); identifies the image the job belongs to
    cam: np.ndarray | None  # Grad-CAM map, None before the prediction arrives
    window: WindowLevel
    options: OverlayOptions
    new_image: bool = False  # the view should fit the new image
    source: np.ndarray | None = None  # what the window applies to: DICOM modality values, else `grey`
    source_inverted: bool = False  # DICOM MONOCHROME1
    cam_strength: float = 1.0  # the map is drawn at this fraction (see cam_strength())


def cam_strength(probability: float) -> float:
    """How strongly to draw a Grad-CAM map: its peak at the model's P(pneumonia).

    Each map is normalised to its own maximum, so without this a NORMAL result (P 0.002) would show
    its faint pneumonia evidence as a full-strength "strong influence" blob. Scaled by P, weak
    evidence looks weak and mostly stays under the cut-off.
    """
    return float(min(max(probability, 0.0), 1.0))


def render_job(job: RenderJob) -> RenderResult:
    """Pure function of the job; QImage (unlike QPixmap) may be built outside the GUI thread."""
    source = job.source if job.source is not None else job.grey
    display = apply_window_level(source, job.window, job.source_inverted)
    overlay = None
    if job.cam is not None and job.options.enabled:
        o = job.options
        cam = job.cam if job.cam_strength >= 1.0 else job.cam * np.float32(job.cam_strength)
        overlay = render_overlay(display, cam, o.colormap, o.opacity, o.cutoff)
    return RenderResult(
        job=job,
        display_grey=display,
        overlay_rgb=overlay,
        display_image=array_to_qimage(display),
        overlay_image=array_to_qimage(overlay) if overlay is not None else None,
    )


@dataclass(frozen=True)
class RenderResult:
    job: RenderJob
    display_grey: np.ndarray  # window/level applied
    overlay_rgb: np.ndarray | None  # None when the overlay is off or there is no map yet
    display_image: QImage
    overlay_image: QImage | None


class LatestRenderer(QObject):
    """Re-blends the display off the GUI thread, latest request wins (see background.LatestOnly).

    A slider drag therefore costs the GUI thread only a pixmap swap per frame that is drawn.
    """

    rendered = Signal(object)  # RenderResult of the latest job
    failed = Signal(object)  # exception

    def __init__(self, pool: QThreadPool, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._latest = LatestOnly(pool, self)
        self._fit_pending = False  # a dropped job asked to fit a new image: the next one must too

    @property
    def busy(self) -> bool:
        return self._latest.busy

    def request(self, job: RenderJob) -> None:
        if self._fit_pending and not job.new_image:
            job = replace(job, new_image=True)
        self._fit_pending = job.new_image

        def on_result(result: RenderResult) -> None:
            self._fit_pending = False
            self.rendered.emit(result)

        def on_error(exc: BaseException) -> None:
            log.error("rendering failed: %r", exc)
            self.failed.emit(exc)

        # A job that became stale while waiting is not rendered at all.
        self._latest.request(
            lambda is_current, _progress: render_job(job) if is_current() else None,
            on_result=lambda result: on_result(result) if result is not None else None,
            on_error=on_error,
        )

    def cancel(self) -> None:
        self._fit_pending = False
        self._latest.cancel()
