"""Draw the app icon (resources/icons/app.png at 256 px and app.svg) from one shape description.

Run: QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/make_icon.py
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import (
    QColor,
    QGuiApplication,
    QImage,
    QLinearGradient,
    QPainter,
    QPainterPath,
    QPen,
    QRadialGradient,
)

SIZE = 256
OUT_DIR = Path(__file__).resolve().parents[1] / "resources" / "icons"

# Left lung as a closed path of cubic curves (the right lung is its mirror about x = 128).
# Each segment: (control1, control2, end); the path starts at START.
START = (112.0, 58.0)
LEFT_LUNG = [
    ((86.0, 56.0), (60.0, 92.0), (54.0, 140.0)),
    ((49.0, 178.0), (58.0, 204.0), (80.0, 204.0)),
    ((96.0, 204.0), (106.0, 196.0), (116.0, 188.0)),
    ((120.0, 150.0), (120.0, 96.0), (112.0, 58.0)),
]
RIB_YS = (96.0, 126.0, 156.0)


@dataclass(frozen=True)
class Palette:
    bg_top: str = "#21486b"
    bg_bottom: str = "#102437"
    lung: str = "#dce6f0"
    spine: str = "#9fb4c8"
    rib: str = "#21486b"
    heat_core: str = "#ff5a2a"
    heat_mid: str = "#ffb020"


PAL = Palette()


def _mirror(point: tuple[float, float]) -> tuple[float, float]:
    return (SIZE - point[0], point[1])


def lung_segments(right: bool) -> tuple[tuple[float, float], Sequence[tuple[tuple[float, float], ...]]]:
    if not right:
        return START, LEFT_LUNG
    return _mirror(START), [tuple(_mirror(p) for p in seg) for seg in LEFT_LUNG]


def lung_qpath(right: bool) -> QPainterPath:
    start, segments = lung_segments(right)
    path = QPainterPath(QPointF(*start))
    for c1, c2, end in segments:
        path.cubicTo(QPointF(*c1), QPointF(*c2), QPointF(*end))
    path.closeSubpath()
    return path


def lung_svg_path(right: bool) -> str:
    start, segments = lung_segments(right)
    parts = [f"M{start[0]:g},{start[1]:g}"]
    for c1, c2, end in segments:
        parts.append(f"C{c1[0]:g},{c1[1]:g} {c2[0]:g},{c2[1]:g} {end[0]:g},{end[1]:g}")
    return " ".join(parts) + " Z"


HEAT_CENTRE = (170.0, 150.0)
HEAT_RADIUS = 46.0


def draw_png(path: Path) -> None:
    image = QImage(SIZE, SIZE, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    p = QPainter(image)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    bg = QLinearGradient(0, 0, 0, SIZE)
    bg.setColorAt(0, QColor(PAL.bg_top))
    bg.setColorAt(1, QColor(PAL.bg_bottom))
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(bg)
    p.drawRoundedRect(QRectF(8, 8, SIZE - 16, SIZE - 16), 52, 52)

    p.setBrush(QColor(PAL.lung))
    for right in (False, True):
        p.drawPath(lung_qpath(right))
    # Ribs: bands cut through the lungs in the background colour.
    p.setPen(QPen(QColor(PAL.rib), 7, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
    p.setBrush(Qt.BrushStyle.NoBrush)
    p.save()
    p.setClipPath(lung_qpath(False).united(lung_qpath(True)))
    for y in RIB_YS:
        for right in (False, True):
            rib = QPainterPath()
            a, b, c = (56.0, y + 16), (86.0, y - 8), (118.0, y + 4)
            if right:
                a, b, c = _mirror(a), _mirror(b), _mirror(c)
            rib.moveTo(QPointF(*a))
            rib.quadTo(QPointF(*b), QPointF(*c))
            p.drawPath(rib)
    p.restore()
    p.setPen(QPen(QColor(PAL.spine), 10, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
    p.drawLine(QPointF(128, 44), QPointF(128, 212))

    heat = QRadialGradient(QPointF(*HEAT_CENTRE), HEAT_RADIUS)
    heat.setColorAt(0.0, QColor(PAL.heat_core))
    mid = QColor(PAL.heat_mid)
    mid.setAlpha(200)
    heat.setColorAt(0.45, mid)
    edge = QColor(PAL.heat_mid)
    edge.setAlpha(0)
    heat.setColorAt(1.0, edge)
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(heat)
    p.drawEllipse(QPointF(*HEAT_CENTRE), HEAT_RADIUS, HEAT_RADIUS)
    p.end()
    # PySide6's stubs type the format as bytes, but the binding accepts only str here.
    if not image.save(str(path), "PNG"):  # type: ignore[call-overload]
        raise SystemExit(f"could not write {path}")


def svg_text() -> str:
    ribs = []
    for y in RIB_YS:
        for right in (False, True):
            a, b, c = (56.0, y + 16), (86.0, y - 8), (118.0, y + 4)
            if right:
                a, b, c = _mirror(a), _mirror(b), _mirror(c)
            ribs.append(f'<path d="M{a[0]:g},{a[1]:g} Q{b[0]:g},{b[1]:g} {c[0]:g},{c[1]:g}"/>')
    cx, cy = HEAT_CENTRE
    return f"""<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE}" height="{SIZE}" viewBox="0 0 {SIZE} {SIZE}">
  <title>Pneumo Desktop</title>
  <defs>
    <linearGradient id="bg" x1="0" y1="0" x2="0" y2="1">
      <stop offset="0" stop-color="{PAL.bg_top}"/>
      <stop offset="1" stop-color="{PAL.bg_bottom}"/>
    </linearGradient>
    <radialGradient id="heat" cx="{cx:g}" cy="{cy:g}" r="{HEAT_RADIUS:g}" gradientUnits="userSpaceOnUse">
      <stop offset="0" stop-color="{PAL.heat_core}"/>
      <stop offset="0.45" stop-color="{PAL.heat_mid}" stop-opacity="0.78"/>
      <stop offset="1" stop-color="{PAL.heat_mid}" stop-opacity="0"/>
    </radialGradient>
    <clipPath id="lungs">
      <path d="{lung_svg_path(False)}"/>
      <path d="{lung_svg_path(True)}"/>
    </clipPath>
  </defs>
  <rect x="8" y="8" width="{SIZE - 16}" height="{SIZE - 16}" rx="52" fill="url(#bg)"/>
  <g fill="{PAL.lung}">
    <path d="{lung_svg_path(False)}"/>
    <path d="{lung_svg_path(True)}"/>
  </g>
  <g fill="none" stroke="{PAL.rib}" stroke-width="7" stroke-linecap="round" clip-path="url(#lungs)">
    {" ".join(ribs)}
  </g>
  <line x1="128" y1="44" x2="128" y2="212" stroke="{PAL.spine}" stroke-width="10" stroke-linecap="round"/>
  <circle cx="{cx:g}" cy="{cy:g}" r="{HEAT_RADIUS:g}" fill="url(#heat)"/>
</svg>
"""


def main() -> int:
    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    draw_png(OUT_DIR / "app.png")
    (OUT_DIR / "app.svg").write_text(svg_text(), encoding="utf-8")
    print(f"wrote {OUT_DIR / 'app.png'} and {OUT_DIR / 'app.svg'}")
    del app
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
