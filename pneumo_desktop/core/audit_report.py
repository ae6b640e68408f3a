"""The explanation audit's outputs: per-image CSV, metrics.json and a one-file HTML page. Qt-free.

Every file is written to a temporary name and renamed, so a reader never sees half a report.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pneumo_desktop import RESEARCH_USE_STATEMENT, __version__
from pneumo_desktop.core import plots
from pneumo_desktop.core.body_mask import body_mask
from pneumo_desktop.core.cam_methods import DEFAULT_METHOD, METHOD_NAMES
from pneumo_desktop.core.explanation_audit import GRID, STEPS, TOP_K, VARIANT_NAMES, AuditRun, ImageAudit
from pneumo_desktop.core.gradcam import upsample
from pneumo_desktop.core.imaging import load_image
from pneumo_desktop.core.model_randomisation import PASS_LEVEL, Stage
from pneumo_desktop.core.overlay import render_overlay
from pneumo_desktop.core.report_files import to_json, write_atomic

TARGET_OUTSIDE = 0.10  # the bar for the map's mass outside the body
TARGET_RATIO = 2.5  # ... and for the top/random logit-drop ratio
SHORTCUT_WARNING_AUC = 0.75  # a body-flattened ROC-AUC above this means the model reads more than the chest
THUMB = 300  # pixels on the long side of the example pictures


def dataset_label(source: Path) -> str:
    """How figures from `source` are labelled: test half A is the project's development set."""
    name = Path(source).name
    return "test half A (development)" if name.lower() == "test_half_a" else name


def write_csv(run: AuditRun, path: Path) -> Path:
    rows = [image.row(run.methods) for image in run.images]
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else
                                 ("" if isinstance(v, float) else v)) for k, v in row.items()})
    for path_, reason in run.errors:
        buffer.write(f"# error,{path_},{reason}\n")
    return write_atomic(Path(path), buffer.getvalue().encode("utf-8"))


def randomisation_dict(stages: Sequence[Stage], passed: bool, images: int) -> dict[str, Any]:
    return {
        "images": images, "pass_level": PASS_LEVEL, "passed": passed,
        "stages": [{"randomised_up_to": s.name,
                    "spearman": {"value": s.spearman, "ci95": list(s.spearman_ci)},
                    "ssim": {"value": s.ssim, "ci95": list(s.ssim_ci)}, "maps_without_evidence": s.zero_maps}
                   for s in stages],
    }


# --------------------------------------------------------------------------- pictures


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=6)  # no `optimize`: 10x faster, a few % larger
    return buffer.getvalue()


def _thumb(grey: np.ndarray) -> np.ndarray:
    h, w = grey.shape
    scale = THUMB / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.BOX))


def _outline(mask: np.ndarray) -> np.ndarray:
    edge = mask.copy()
    inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    edge[1:-1, 1:-1] &= ~inner
    return edge


def example_pictures(image: ImageAudit, method: str) -> dict[str, bytes]:
    """PNG bytes of the image, its raw map as an overlay, and the body outline (the audit's notion of inside)."""
    grey = _thumb(load_image(image.path).grey)
    cam = upsample(image.cams[method], grey.shape[0], grey.shape[1])
    overlay = render_overlay(grey, cam, opacity=0.45)
    outlined = np.repeat(grey[:, :, None], 3, axis=2)
    edge = _outline(body_mask(grey))
    thick = edge | np.roll(edge, 1, 0) | np.roll(edge, 1, 1)
    outlined[thick] = (0, 200, 255)
    overlay[thick] = (255, 255, 255)
    return {name: _png(px) for name, px in
            (("image", np.repeat(grey[:, :, None], 3, axis=2)), ("map", overlay), ("body", outlined))}


def examples(run: AuditRun, method: str = DEFAULT_METHOD) -> list[tuple[str, ImageAudit]]:
    """Best, median and worst image by the map's mass outside the body (images with a map only)."""
    scored = sorted((i for i in run.images if math.isfinite(i.mass_outside.get(method, math.nan))),
                    key=lambda i: i.mass_outside[method])
    if not scored:
        return []
    return [("best (least outside the body)", scored[0]), ("median", scored[len(scored) // 2]),
            ("worst (most outside the body)", scored[-1])]


def curves_plot(summary: dict[str, Any], method: str) -> bytes:
    curves = summary.get("mean_curves") or {}
    names = [(f"deletion/map/{method}", plots.RED, False), ("deletion/random", plots.GREY, False),
             (f"deletion/inverse/{method}", plots.BLUE, False), (f"insertion/map/{method}", plots.RED, True),
             ("insertion/random", plots.GREY, True), (f"insertion/inverse/{method}", plots.BLUE, True)]
    values = [np.asarray(curves[n]) for n, _, _ in names if n in curves]
    low = float(min(v.min() for v in values)) if values else 0.0
    high = float(max(v.max() for v in values)) if values else 1.0
    span = max(high - low, 1e-6)
    chart = plots.Chart(f"Mean logit curves ({METHOD_NAMES.get(method, method)})", "share of grid cells changed",
                        f"mean logit - {low:.1f}", ymax=span)
    xs = np.asarray(STEPS) / (GRID * GRID)
    for name, colour, dashed in names:
        if name in curves:
            chart.line(xs, np.asarray(curves[name]) - low, colour=colour, dashed=dashed)
    return plots.png_bytes(chart.image)


# --------------------------------------------------------------------------- HTML


def _f(figure: dict[str, Any] | None, digits: int = 3) -> str:
    if not figure or figure.get("value") is None or not math.isfinite(figure["value"]):
        return "n/a"
    low, high = figure["ci95"]
    return f"{figure['value']:.{digits}f} <small>(95% CI {low:.{digits}f} – {high:.{digits}f})</small>"


def verdicts(summary: dict[str, Any], method: str = DEFAULT_METHOD) -> list[str]:
    """Plain-language findings, one sentence each."""
    fig = summary.get("figures", {})
    out = []
    outside = fig.get(f"{method}/mass_outside_body", {}).get("value")
    area = fig.get("outside_area_share", {}).get("value")
    if outside is not None and area is not None and math.isfinite(outside):
        if outside <= TARGET_OUTSIDE:
            out.append(f"The map keeps its weight on the patient: {outside:.0%} of it lies outside the body "
                       f"(a map spread evenly over the film would put {area:.0%} there).")
        else:
            out.append(f"{outside:.0%} of the map's weight lies outside the patient's body (air, labels, the film's "
                       f"edge); a map spread evenly over the film would put {area:.0%} there. Coloured areas outside "
                       "the body are not evidence about the lungs.")
    ratio = fig.get(f"{method}/top_random_drop_ratio", {}).get("value")
    if ratio is not None and math.isfinite(ratio):
        out.append(f"Greying the {TOP_K} of {GRID * GRID} squares the map ranks highest lowers the model's pneumonia "
                   f"score {ratio:.1f} times as much as greying {TOP_K} random squares"
                   + (" (the map points at what the model uses)." if ratio >= TARGET_RATIO else
                      f" (below {TARGET_RATIO}: the map is only loosely tied to what the model uses)."))
    shortcut = summary.get("shortcut_roc_auc", {})
    body = shortcut.get("body_flattened", {}).get("value")
    if body is not None and math.isfinite(body):
        if body > SHORTCUT_WARNING_AUC:
            out.append(f"With the whole body painted one flat grey the model still separates pneumonia from normal "
                       f"at ROC-AUC {body:.2f}: it uses the outline, position or framing of the film, which will "
                       "not carry over to another hospital's images.")
        else:
            out.append(f"With the body painted flat grey the model's ROC-AUC falls to {body:.2f}: it needs the "
                       "chest's contents to decide.")
    sanity = summary.get("randomisation")
    if sanity:
        out.append("Randomisation check: the maps " + ("change when the model's learned weights are destroyed "
                   "(pass: they explain the model, not just the picture)." if sanity["passed"] else
                   "barely change when the model's learned weights are destroyed (fail: they show the picture, "
                   "not what the model learned)."))
    return out


def report_html(summary: dict[str, Any], run: AuditRun, label: str, model: dict[str, str]) -> str:
    e = html.escape
    fig = summary.get("figures", {})
    methods = summary.get("methods", [DEFAULT_METHOD])
    head = "".join(f"<th>{e(METHOD_NAMES.get(m, m))}</th>" for m in methods)

    def row(title: str, key: str) -> str:
        return f"<tr><td>{e(title)}</td>" + "".join(f"<td>{_f(fig.get(f'{m}/{key}'))}</td>" for m in methods) + "</tr>"

    where = (row("map mass outside the body", "mass_outside_body") +
             f"<tr><td>uniform map (body's outside, area share)</td><td colspan={len(methods)}>"
             f"{_f(fig.get('outside_area_share'))}</td></tr>" + row("map mass in the border band", "mass_in_border") +
             f"<tr><td>uniform map (border band, area share)</td><td colspan={len(methods)}>"
             f"{_f(fig.get('border_area_share'))}</td></tr>")
    faith = (row(f"top/random logit drop after {TOP_K} of {GRID * GRID} cells", "top_random_drop_ratio") +
             row("same, pneumonia images only", "top_random_drop_ratio_pneumonia") +
             row("deletion AUC, map order (lower = more faithful)", "deletion_map_auc") +
             f"<tr><td>deletion AUC, random order</td><td colspan={len(methods)}>"
             f"{_f(fig.get('random/deletion_auc'))}</td></tr>" +
             row("deletion AUC, inverse order", "deletion_inverse_auc") +
             row("insertion AUC, map order (higher = more faithful)", "insertion_map_auc") +
             f"<tr><td>insertion AUC, random order</td><td colspan={len(methods)}>"
             f"{_f(fig.get('random/insertion_auc'))}</td></tr>" +
             row("insertion AUC, inverse order", "insertion_inverse_auc"))
    shortcut = "".join(f"<tr><td>{e(VARIANT_NAMES[k])}</td><td>{_f(v)}</td></tr>"
                       for k, v in summary.get("shortcut_roc_auc", {}).items())
    sanity = summary.get("randomisation")
    sanity_html = "<p>Not run.</p>"
    if sanity:
        sanity_html = ("<table><tr><th>weights randomised up to</th><th>Spearman rank correlation</th><th>SSIM</th>"
                       "</tr>" + "".join(f"<tr><td>{e(s['randomised_up_to'])}</td><td>{_f(s['spearman'])}</td>"
                                         f"<td>{_f(s['ssim'])}</td></tr>" for s in sanity["stages"]) +
                       f"</table><p>{sanity['images']} images, {e(METHOD_NAMES.get(methods[0], methods[0]))}. "
                       f"Pass: {'yes' if sanity['passed'] else 'no'} (both similarities below {PASS_LEVEL} after "
                       "the cascade, and the rank correlation below it once the head alone is randomised).</p>")
    pics = ""
    for title, image in examples(run, methods[0]):
        png = example_pictures(image, methods[0])
        cells = "".join(f'<figure><img alt="{e(k)}" src="data:image/png;base64,{base64.b64encode(v).decode()}">'
                        f"<figcaption>{e(c)}</figcaption></figure>"
                        for (k, v), c in zip(png.items(), ("image", "raw map", "body outline (audit's inside)")))
        pics += (f"<h3>{e(title)}: {image.mass_outside[methods[0]]:.0%} of the map outside the body</h3>"
                 f"<p><code>{e(image.path.name)}</code>, {'PNEUMONIA' if image.positive else 'NORMAL'}, "
                 f"P(pneumonia) {image.probability:.3f}</p>{cells}")
    curves = ""
    if summary.get("mean_curves"):
        data = base64.b64encode(curves_plot(summary, methods[0])).decode()
        curves = (f'<figure><img alt="curves" src="data:image/png;base64,{data}"><figcaption>red: map order, grey: '
                  "random, blue: inverse; solid: deletion, dashed: insertion</figcaption></figure>")
    findings = "".join(f"<li>{e(v)}</li>" for v in verdicts(summary, methods[0]))
    images = summary["images"]
    errors = "".join(f"<li><code>{e(str(p))}</code>: {e(r)}</li>" for p, r in run.errors)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Explanation audit: {e(label)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#202124}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
figure{{display:inline-block;margin:4px;vertical-align:top}}img{{max-width:310px}}.note{{color:#7a4a00}}</style>
</head><body>
<h1>Does the map read the lungs? Explanation audit on {e(label)}</h1>
<p class="note">{e(RESEARCH_USE_STATEMENT)}</p>
<p>Model: {e(model.get('name', ''))} {e(model.get('version', ''))}
(sha256 <code>{e(model.get('sha256', ''))}</code>)<br>
Images: {images['audited']} audited ({images['pneumonia']} PNEUMONIA, {images['normal']} NORMAL), {images['errors']}
could not be read. All figures: {e(label)}.</p>
<h2>In short</h2><ul>{findings}</ul>
<h2>What this measures</h2>
<p>The colour map shows where the model's evidence for pneumonia lies (Grad-CAM: the last layer's activations
weighted by how much they raise the pneumonia score). This page checks that map four ways. <b>Where</b>: how much of
its weight lies outside the patient's body (found as the air that reaches the film's edge; the lungs, enclosed by the
body, count as inside) and in the film's outer border (8% of each side). <b>Faithfulness</b>: the image is cut into
an {GRID}x{GRID} grid; squares are painted the image's mean grey in the order the map ranks them, in a random order
and in the reverse order, and the model's score (its logit) is followed. A faithful map makes the score fall fastest
in its own order. <b>Sanity</b>: the model's learned weights are replaced by random numbers, first in its final
layers, then deeper; a map that does not change is showing the picture, not the model. <b>Shortcuts</b>: the model
is scored on images whose body, or background, or outer border has been painted flat grey.</p>
<p>Intervals: 95% percentile bootstrap ({summary['bootstrap']['resamples']} resamples of the images, seed
{summary['bootstrap']['seed']}). The audit measures the raw map, never the display.</p>
<h2>Where the evidence lies</h2><table><tr><th>figure</th>{head}</tr>{where}</table>
<h2>Faithfulness</h2><table><tr><th>figure</th>{head}</tr>{faith}</table>
<p>Areas are of the model's logit over the share of the {GRID * GRID} cells changed.</p>{curves}
<h2>Sanity: model randomisation</h2>{sanity_html}
<h2>Shortcut tests (ROC-AUC)</h2><table><tr><th>input</th><th>ROC-AUC</th></tr>{shortcut}</table>
<h2>Examples</h2>{pics}
{f'<h2>Not audited ({len(run.errors)})</h2><ul>{errors}</ul>' if errors else ''}
<p><small>Pneumo Desktop {e(__version__)}; audit run in {summary.get('elapsed_s', 0):.0f} s.</small></p>
</body></html>
"""


def evaluation_section(summary: dict[str, Any]) -> str:
    """The explanation-audit section of `evaluate`'s report.html (light: no examples, no randomisation)."""
    e = html.escape
    fig = summary.get("figures", {})
    method = (summary.get("methods") or [DEFAULT_METHOD])[0]  # the map the app draws for this model
    rows = [(f"map mass outside the body ({METHOD_NAMES.get(method, method)})", fig.get(f"{method}/mass_outside_body")),
            ("uniform map: area outside the body", fig.get("outside_area_share")),
            ("map mass in the border band", fig.get(f"{method}/mass_in_border")),
            ("uniform map: border band area", fig.get("border_area_share"))]
    if f"{method}/top_random_drop_ratio" in fig:
        rows.append((f"top/random logit drop after {TOP_K} of {GRID * GRID} cells",
                     fig[f"{method}/top_random_drop_ratio"]))
    rows += [(f"ROC-AUC, {VARIANT_NAMES[k]}", v) for k, v in summary.get("shortcut_roc_auc", {}).items()]
    table = "".join(f"<tr><td>{e(name)}</td><td>{_f(value)}</td></tr>" for name, value in rows)
    findings = "".join(f"<li>{e(v)}</li>" for v in verdicts(summary))
    return (f"<h2>Explanation audit ({e(summary.get('kind', 'light'))})</h2><ul>{findings}</ul>"
            f"<table><tr><th>figure</th><th>value (95% CI)</th></tr>{table}</table>"
            "<p>Where the heat map's weight lies relative to the patient's body, and whether the model still "
            "separates the classes with the body or the background painted flat grey. The full audit (faithfulness, "
            "randomisation, examples): <code>pneumo-desktop audit-explanations</code> (docs/EXPLANATIONS.md).</p>")


def write_outputs(run: AuditRun, summary: dict[str, Any], out_dir: Path, label: str,
                  model: dict[str, str]) -> dict[str, Path]:
    """audit.csv, metrics.json and report.html in out_dir (each written atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {"data": label, "model": model, "audit": summary, "app_version": __version__}
    return {
        "csv": write_csv(run, out_dir / "audit.csv"),
        "json": write_atomic(out_dir / "metrics.json", to_json(document).encode()),
        "html": write_atomic(out_dir / "report.html", report_html(summary, run, label, model).encode("utf-8")),
    }


def choose_items(items: Sequence[Any], limit: int | None, seed: int) -> list[Any]:
    """A seeded random subset of `limit` labelled images (both classes keep their share), in listing order."""
    if limit is None or limit >= len(items):
        return list(items)
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(len(items))[:limit])
    return [items[i] for i in keep]


def full_audit(model, items: Sequence[Any], out_dir: Path, label: str, *, methods: Sequence[str] = (DEFAULT_METHOD,),
               seed: int = 0, randomisation_images: int = 32, faithfulness: bool = True, progress=None,
               cancel=None, resamples: int = 1000) -> tuple[dict[str, Any], dict[str, Path]]:
    """Audit labelled images (`LabelledImage`s) and write the CSV, metrics.json and the HTML page."""
    import time

    from pneumo_desktop.core.explanation_audit import audit_images, summarise
    from pneumo_desktop.core.model_randomisation import passes, randomisation_test

    started = time.perf_counter()
    run = audit_images(model, [(i.path, i.positive) for i in items], methods=methods, faithfulness=faithfulness,
                       seed=seed, progress=progress, cancel=cancel)
    summary = summarise(run, resamples)
    if randomisation_images > 0 and run.images:
        chosen = choose_items(run.images, randomisation_images, seed)
        inputs = np.stack([model.prepare(load_image(i.path)) for i in chosen])
        stages = randomisation_test(model, inputs, method=methods[0], seed=seed, resamples=resamples)
        summary["randomisation"] = randomisation_dict(stages, passes(stages), len(chosen))
    summary["elapsed_s"] = time.perf_counter() - started
    model_info = {"name": model.card.name, "version": model.card.version, "sha256": model.sha256}
    return summary, write_outputs(run, summary, out_dir, label, model_info)
