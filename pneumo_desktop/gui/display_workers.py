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
from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot
from PySide6.QtGui import QImage

from ..core.overlay import render_overlay
from .image_view import array_to_qimage
from .options import OverlayOptions, WindowLevel, apply_window_level
from .qt_compat import emit
from .workers import describe_error

if TYPE_CHECKING:
    from ..core.imaging import LoadedImage
    from ..core.runtime import Explanation, PneumoniaModel

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Display requests: decode + explain the image on screen, latest request wins
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CachedResult:
    image: "LoadedImage"
    explanation: "Explanation | None"


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


@dataclass(frozen=True)
class ImageRequest:
    generation: int
    path: Path


class _ImageSignals(QObject):
    image = Signal(int, object)  # generation, LoadedImage
    explanation = Signal(int, object)  # generation, Explanation
    failed = Signal(int, object, str)  # generation, path, message
    dropped = Signal(object)  # path
    done = Signal()


class _ImageTask(QRunnable):
    def __init__(
        self,
        request: ImageRequest,
        model: "PneumoniaModel | None",
        cache: ResultCache,
        is_current: Callable[[int], bool],
    ) -> None:
        super().__init__()
        self.request = request
        self.model = model
        self.cache = cache
        self.is_current = is_current
        self.signals = _ImageSignals()
        self.setAutoDelete(True)

    def run(self) -> None:
        req, sig = self.request, self.signals
        try:
            # A request that became stale while queued costs nothing: check before each stage.
            if not self.is_current(req.generation):
                emit(sig.dropped, req.path)
                return
            cached = self.cache.get(req.path)
            if cached is None:
                from ..core.imaging import load_image

                cached = CachedResult(load_image(req.path), None)
                self.cache.put(req.path, cached)
            if not self.is_current(req.generation):
                emit(sig.dropped, req.path)
                return
            emit(sig.image, req.generation, cached.image)
            if self.model is None:
                return
            if cached.explanation is None:
                if not self.is_current(req.generation):
                    emit(sig.dropped, req.path)
                    return
                explanation = self.model.explain(cached.image)
                cached = CachedResult(cached.image, explanation)
                self.cache.put(req.path, cached)
            emit(sig.explanation, req.generation, cached.explanation)
        except Exception as exc:  # noqa: BLE001 - shown in the file's row, never raised
            if not _is_image_error(exc):
                log.exception("unexpected error while reading %s", req.path)
            emit(sig.failed, req.generation, req.path, describe_error(exc))
        finally:
            emit(sig.done)


def _is_image_error(exc: Exception) -> bool:
    from ..core.imaging import ImageLoadError

    return isinstance(exc, ImageLoadError)


class LatestImageRequester(QObject):
    """Single-slot, latest-request-wins loader for the image on screen.

    At most one task runs; at most one waits. A new request replaces the waiting one (which is
    dropped, never run) and bumps the generation, so a running task for an image that is no longer
    shown skips its remaining stages and its results are ignored. Selection changes therefore
    never block and never queue up work behind each other.
    """

    imageReady = Signal(object)  # LoadedImage of the current request
    explanationReady = Signal(object)  # Explanation of the current request
    failed = Signal(object, str)  # path, message (current request only)
    dropped = Signal(object)  # path of a superseded request

    def __init__(self, pool: QThreadPool, parent: QObject | None = None, cache_size: int = 6) -> None:
        super().__init__(parent)
        self._pool = pool
        self._model: PneumoniaModel | None = None
        self._cache = ResultCache(cache_size)
        self._generation = 0
        self._running: ImageRequest | None = None
        self._pending: ImageRequest | None = None
        self._current_path: Path | None = None

    # -- public ---------------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        return self._generation

    @property
    def current_path(self) -> Path | None:
        return self._current_path

    @property
    def busy(self) -> bool:
        return self._running is not None

    def set_model(self, model: "PneumoniaModel | None") -> None:
        self._model = model
        self._cache.clear()  # explanations belong to the model that made them

    def request(self, path: Path) -> int:
        self._generation += 1
        self._current_path = Path(path)
        req = ImageRequest(self._generation, Path(path))
        if self._running is None:
            self._start(req)
        else:
            if self._pending is not None:
                emit(self.dropped, self._pending.path)
            self._pending = req
        return req.generation

    def cancel(self) -> None:
        """Forget the current request (e.g. the list was cleared)."""
        self._generation += 1
        self._current_path = None
        if self._pending is not None:
            emit(self.dropped, self._pending.path)
            self._pending = None

    # -- internals ------------------------------------------------------------------------------
    def _is_current(self, generation: int) -> bool:
        # Called from the worker thread: reading an int attribute is atomic under the GIL.
        return generation == self._generation

    def _start(self, req: ImageRequest) -> None:
        self._running = req
        task = _ImageTask(req, self._model, self._cache, self._is_current)
        task.signals.image.connect(self._on_image)
        task.signals.explanation.connect(self._on_explanation)
        task.signals.failed.connect(self._on_failed)
        task.signals.dropped.connect(self._on_dropped)
        task.signals.done.connect(self._on_done)
        self._pool.start(task)

    @Slot(int, object)
    def _on_image(self, generation: int, image: object) -> None:
        if generation == self._generation:
            emit(self.imageReady, image)

    @Slot(int, object)
    def _on_explanation(self, generation: int, explanation: object) -> None:
        if generation == self._generation:
            emit(self.explanationReady, explanation)
        else:
            emit(self.dropped, getattr(getattr(explanation, "prediction", None), "path", None))

    @Slot(int, object, str)
    def _on_failed(self, generation: int, path: object, message: str) -> None:
        if generation == self._generation:
            emit(self.failed, path, message)

    @Slot(object)
    def _on_dropped(self, path: object) -> None:
        emit(self.dropped, path)

    @Slot()
    def _on_done(self) -> None:
        self._running = None
        if self._pending is not None:
            req, self._pending = self._pending, None
            self._start(req)


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


class _RenderSignals(QObject):
    result = Signal(int, object)  # generation, RenderResult
    failed = Signal(int, object)  # generation, exception
    done = Signal()


class _RenderTask(QRunnable):
    def __init__(self, generation: int, job: RenderJob, is_current: Callable[[int], bool]) -> None:
        super().__init__()
        self.generation = generation
        self.job = job
        self.is_current = is_current
        self.signals = _RenderSignals()
        self.setAutoDelete(True)

    def run(self) -> None:
        try:
            if self.is_current(self.generation):
                emit(self.signals.result, self.generation, render_job(self.job))
        except Exception as exc:  # noqa: BLE001 - reported, never raised into the pool
            log.exception("rendering failed")
            emit(self.signals.failed, self.generation, exc)
        finally:
            emit(self.signals.done)


class LatestRenderer(QObject):
    """Re-blends the display off the GUI thread: one job runs, the newest one waits, others drop.

    A slider drag therefore costs the GUI thread only a pixmap swap per frame that is drawn.
    """

    rendered = Signal(object)  # RenderResult of the latest job
    failed = Signal(object)  # exception

    def __init__(self, pool: QThreadPool, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = pool
        self._generation = 0
        self._running = False
        self._pending: tuple[int, RenderJob] | None = None

    @property
    def busy(self) -> bool:
        return self._running or self._pending is not None

    def request(self, job: RenderJob) -> None:
        self._generation += 1
        if self._pending is not None and self._pending[1].new_image and not job.new_image:
            job = replace(job, new_image=True)  # do not lose the "fit the new image" of a dropped job
        if self._running:
            self._pending = (self._generation, job)
        else:
            self._start(self._generation, job)

    def cancel(self) -> None:
        self._generation += 1
        self._pending = None

    def _is_current(self, generation: int) -> bool:
        return generation == self._generation

    def _start(self, generation: int, job: RenderJob) -> None:
        self._running = True
        task = _RenderTask(generation, job, self._is_current)
        task.signals.result.connect(self._on_result)
        task.signals.failed.connect(self._on_failed)
        task.signals.done.connect(self._on_done)
        self._pool.start(task)

    @Slot(int, object)
    def _on_result(self, generation: int, result: object) -> None:
        if generation == self._generation:
            emit(self.rendered, result)

    @Slot(int, object)
    def _on_failed(self, generation: int, exc: object) -> None:
        if generation == self._generation:
            emit(self.failed, exc)

    @Slot()
    def _on_done(self) -> None:
        self._running = False
        if self._pending is not None:
            (generation, job), self._pending = self._pending, None
            self._start(generation, job)


