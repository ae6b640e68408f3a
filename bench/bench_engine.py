"""Engine benchmark: Grad-CAM overhead, batch throughput and memory of the Qt-free core.

(a) probability + Grad-CAM per image (PneumoniaModel.run + prediction + map at the original resolution)
    vs a bare LiteRT invoke of the same model, both from the same prepared input; medians. Target: <= 1.2x.
    Also shown: explain() from a decoded image, i.e. including prepare_input (the shared preprocessing).
(b) throughput on --n full-resolution JPEGs (hard links cycling through the 12 samples, 656x1024 to
    1353x1566): the whole-process `pneumo-desktop score` command (a fresh interpreter: start-up, model load,
    decoding, CSV) vs the study-style loop (cv2.imread + cv2.resize + Keras model.predict one image at a
    time on model.keras, in this process) [target >= 12x]; and score_paths vs the pure-inference ceiling
    (ready inputs through PneumoniaModel.run in batches, without maps as score_paths runs them: the score
    signature when the model has one; the full graph's rate is shown beside it) [target >= 85%]. --rounds
    rounds, each timing back
    to back the ceiling, score_paths, the score command and the study loop (--seed-n files a round), with
    the load average before and after: a load spike hits one round's figures together, so the per-round
    ratios and their medians are what to compare on a shared or busy machine.
(c) RSS while scoring --rss-n images (hard links to the samples in a temp folder), at 500/1000/2000.

Usage: python bench/bench_engine.py [--model DIR] [--n N] [--seed-n N] [--rounds R] [--rss-n N] [--parts abc]
       [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from gui_harness import link_copies  # noqa: E402

from pneumo_desktop.core import model_card as mc  # noqa: E402
from pneumo_desktop.core.batch import score_paths  # noqa: E402
from pneumo_desktop.core.imaging import load_image  # noqa: E402
from pneumo_desktop.core.resources import bundled_model_dir, samples_dir  # noqa: E402
from pneumo_desktop.core.runtime import PneumoniaModel  # noqa: E402


def rss_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float | None:
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1024 if sys.platform != "darwin" else peak / 2**20
    except ImportError:
        return None


def sample_files() -> list[Path]:
    return sorted(p for p in samples_dir().iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))


def median_ms(fn, repeats: int) -> float:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def bench_gradcam_overhead(model: PneumoniaModel, repeats: int) -> dict:
    """Interleaved timings (one of each per round) so that background load hits all three alike."""
    from ai_edge_litert.interpreter import Interpreter

    images = [load_image(p) for p in sample_files()]
    inputs = [model.prepare(img)[None] for img in images]
    runner = Interpreter(
        model_path=str(model.model_dir / mc.TFLITE_FILENAME), num_threads=os.cpu_count()
    ).get_signature_runner(mc.SIGNATURE_KEY)
    runner(image=inputs[0])  # warm-up (delegate set-up)
    model.explain(images[0])

    def with_cam(i: int) -> None:  # what explain() does after preprocessing
        img = images[i]
        raw = model.run(inputs[i])
        model.prediction(img.path, raw.probability[0], **raw.extras(0))
        raw.cam(0, img.height, img.width)

    bare: list[float] = []
    cam: list[float] = []
    full: list[float] = []
    decode: list[float] = []
    for k in range(repeats):
        i = k % len(images)
        for bucket, call in (
            (bare, lambda i=i: runner(image=inputs[i])),
            (cam, lambda i=i: with_cam(i)),
            (full, lambda i=i: model.explain(images[i])),
            (decode, lambda i=i: load_image(images[i].path)),
        ):
            start = time.perf_counter()
            call()
            bucket.append(time.perf_counter() - start)
    med = {name: statistics.median(v) * 1000 for name, v in
           (("bare", bare), ("cam", cam), ("full", full), ("decode", decode))}
    sizes = sorted({(img.width * img.height, f"{img.width}x{img.height}") for img in images})
    return {
        "bare_invoke_ms": med["bare"],
        "probability_and_gradcam_ms": med["cam"],
        "ratio": med["cam"] / med["bare"],
        "target_ratio_max": 1.2,
        "explain_from_decoded_image_ms": med["full"],
        "explain_ratio_including_preprocessing": med["full"] / med["bare"],
        "decode_ms": med["decode"],
        "image_sizes": f"{sizes[0][1]} .. {sizes[-1][1]}",
    }


def time_cli_score(folder: Path, out: Path) -> float:
    """Seconds for the whole `pneumo-desktop score` process (python -m pneumo_desktop, this source tree)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pneumo_desktop", "score", str(folder), "-o", str(out), "-q",
                           "--overwrite"], env=env, capture_output=True, text=True, timeout=3600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"pneumo-desktop score failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed


def bench_throughput(model: PneumoniaModel, n: int, work: Path, seed_n: int, rounds: int) -> dict:
    """(b) in rounds; each round times, back to back: the pure-inference ceiling, score_paths, the whole-process
    `pneumo-desktop score` and the study-style loop, and records the load average. A load spike then hits one
    round's figures together: the per-round ratios (score_paths / ceiling, score command / study loop) and their
    medians are the robust figures on a shared machine; the medians of the rates are shown too."""
    paths = link_copies(sample_files(), work / "throughput", n)
    # pure-inference ceiling: inputs already decoded and prepared, in batches of the runtime's size, through
    # what score_paths runs when it writes no heat maps (maps=False: the score signature when the model file has
    # one); the full graph's (with the map's backward pass) is timed beside it
    size = model.batch_size
    ready = np.stack([model.prepare(load_image(p)) for p in sample_files()])
    batch = np.concatenate([ready] * (size // len(ready) + 1))[:size]
    model.run(batch)
    model.run(batch, maps=False)
    runs = max(1, n // size)
    seed_one = _study_loop(model)
    seed_paths = paths[:seed_n]
    if seed_one is not None:
        seed_one(seed_paths[0])  # graph tracing is not part of the per-image cost
    time_cli_score(work / "throughput", work / "cli.csv")  # warm-up: page cache, .pyc files
    per_round: list[dict] = []
    for index in range(rounds):
        entry: dict = {"load_average": [round(x, 2) for x in os.getloadavg()]}
        for maps, key in ((True, "ceiling_maps"), (False, "ceiling")):
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(runs):
                model.run(batch, maps=maps)
            entry[f"{key}_img_s"] = runs * size / (time.perf_counter() - start)
            entry[f"{key}_cpu_ms"] = (time.process_time() - cpu) * 1000 / (runs * size)
        cpu = time.process_time()
        summary = score_paths(paths, work / "throughput.csv", model=model)
        assert summary.scored == n, summary
        entry["score_paths_img_s"] = n / summary.elapsed_s
        entry["score_paths_cpu_ms"] = (time.process_time() - cpu) * 1000 / n
        entry["vs_ceiling"] = entry["score_paths_img_s"] / entry["ceiling_img_s"]
        entry["cli_img_s"] = n / time_cli_score(work / "throughput", work / "cli.csv")
        if seed_one is not None:
            start = time.perf_counter()
            for path in seed_paths:
                seed_one(path)
            entry["seed_loop_img_s"] = len(seed_paths) / (time.perf_counter() - start)
            entry["cli_vs_seed"] = entry["cli_img_s"] / entry["seed_loop_img_s"]
        entry["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        per_round.append(entry)
        line = (f"    round {index + 1}: ceiling {entry['ceiling_img_s']:.1f} img/s (with maps "
                f"{entry['ceiling_maps_img_s']:.1f}), score_paths "
                f"{entry['score_paths_img_s']:.1f} img/s ({entry['vs_ceiling']:.0%}); CPU per image "
                f"{entry['ceiling_cpu_ms']:.1f} / {entry['score_paths_cpu_ms']:.1f} ms; score command "
                f"{entry['cli_img_s']:.1f} img/s")
        if "cli_vs_seed" in entry:
            line += f", study loop {entry['seed_loop_img_s']:.2f} img/s ({entry['cli_vs_seed']:.1f}x)"
        print(line + f"; load {entry['load_average']} -> {entry['load_average_after']}", flush=True)

    def median(key: str) -> float:
        return statistics.median(r[key] for r in per_round)

    result: dict = {
        "images": n, "rounds": per_round, "score_paths_img_s": median("score_paths_img_s"),
        "ceiling_img_s": median("ceiling_img_s"), "ceiling_maps_img_s": median("ceiling_maps_img_s"),
        "ceiling_maps_cpu_ms": median("ceiling_maps_cpu_ms"), "vs_ceiling": median("vs_ceiling"),
        "vs_ceiling_rounds": [r["vs_ceiling"] for r in per_round], "target_vs_ceiling_min": 0.85,
        "cli_img_s": median("cli_img_s"),
        # CPU time per image (all threads of this process): less sensitive to other processes than wall time;
        # on a machine where both are CPU-bound, ceiling_cpu / score_paths_cpu bounds the throughput ratio
        "ceiling_cpu_ms": median("ceiling_cpu_ms"), "score_paths_cpu_ms": median("score_paths_cpu_ms"),
    }
    if seed_one is None:
        result["seed_loop"] = "skipped: no model.keras in the model folder (or no TensorFlow/OpenCV)"
        return result
    result.update({"seed_images": len(seed_paths), "seed_loop_img_s": median("seed_loop_img_s"),
                   "cli_vs_seed": median("cli_vs_seed"), "cli_vs_seed_rounds": [r["cli_vs_seed"] for r in per_round],
                   "vs_seed": median("score_paths_img_s") / median("seed_loop_img_s"),
                   "target_cli_vs_seed_min": 12.0})
    return result


def _study_loop(model: PneumoniaModel):
    """What the original study script did per image (cv2.imread + cv2.resize + Keras predict on model.keras),
    or None without model.keras, TensorFlow or OpenCV (the trainer's extras)."""
    keras_path = model.model_dir / mc.KERAS_FILENAME
    if not keras_path.exists():
        return None
    try:
        import cv2
        import keras
    except ImportError:
        return None
    keras_model = keras.models.load_model(keras_path, compile=False)
    input_size = model.input_size

    def seed_one(path: Path) -> float:
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            raise OSError(f"OpenCV could not read {path}")
        x = np.repeat(cv2.resize(grey, (input_size, input_size))[:, :, None], 3, axis=2).astype(np.float32)
        out = keras_model.predict(x[None], verbose=0)
        if isinstance(out, dict):  # models with several heads (v4): the pneumonia probability
            out = out[mc.OUTPUT_PROBABILITY]
        elif isinstance(out, (list, tuple)):
            out = out[0]
        return float(np.asarray(out).reshape(-1)[0])

    return seed_one


def bench_rss(model: PneumoniaModel, n: int, work: Path) -> dict:
    paths = link_copies(sample_files(), work / "rss", n)
    checkpoints = sorted({c for c in (500, 1000, 2000, n) if c <= n})
    marks: dict[int, float | None] = {}

    def progress(p) -> None:
        if p.done in checkpoints:
            marks[p.done] = rss_mib()

    before = rss_mib()
    summary = score_paths(paths, work / "rss.csv", model=model, progress=progress)
    return {"images": n, "rss_before_mib": before, "rss_at_mib": marks, "peak_rss_mib": peak_rss_mib(),
            "img_s": n / summary.elapsed_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the bundled model)")
    parser.add_argument("--n", type=int, default=300, help="images for the throughput comparison")
    parser.add_argument("--seed-n", type=int, default=100,
                        help="images for the slow study-style loop in each round (a rate: img/s)")
    parser.add_argument("--rss-n", type=int, default=2000, help="images for the memory run")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (b) (medians reported)")
    parser.add_argument("--repeats", type=int, default=60, help="timed calls for the medians in (a)")
    parser.add_argument("--parts", default="abc", help="which of (a), (b), (c) to run, e.g. b (default: abc)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)

    model_dir = args.model or bundled_model_dir()
    if not (model_dir / mc.CARD_FILENAME).is_file():
        print(f"bench_engine: no model in {model_dir}; pass --model DIR", file=sys.stderr)
        return 2
    model = PneumoniaModel.load(model_dir)
    print(f"bench_engine: model {model.describe()} ({model.card.backbone}, {model.input_size}px) from {model_dir}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    results: dict = {"model": model.describe(), "cpus": os.cpu_count(),
                     "load_average_before": tuple(round(x, 1) for x in os.getloadavg())}
    with tempfile.TemporaryDirectory(prefix="pneumo-bench-") as tmp:
        work = Path(tmp)
        if "a" in args.parts:
            a = results["gradcam_overhead"] = bench_gradcam_overhead(model, args.repeats)
            print(f"(a) per image ({a['image_sizes']}), medians: bare LiteRT invoke {a['bare_invoke_ms']:.1f} ms | "
                  f"probability + Grad-CAM at full resolution {a['probability_and_gradcam_ms']:.1f} ms -> "
                  f"{a['ratio']:.2f}x (target <= 1.2x: {'met' if a['ratio'] <= 1.2 else 'MISSED'}) | "
                  f"explain() incl. prepare_input {a['explain_from_decoded_image_ms']:.1f} ms -> "
                  f"{a['explain_ratio_including_preprocessing']:.2f}x | decode {a['decode_ms']:.1f} ms")
        # (c) before (b): Keras/TensorFlow, loaded in (b), would inflate the process's RSS
        if "c" in args.parts:
            c = results["memory"] = bench_rss(model, args.rss_n, work)
            marks = ", ".join(f"{k}: {v:.0f} MiB" for k, v in c["rss_at_mib"].items() if v is not None)
            print(f"(c) RSS scoring {c['images']} images: before {c['rss_before_mib']:.0f} MiB; {marks}; "
                  f"peak {c['peak_rss_mib']:.0f} MiB ({c['img_s']:.1f} img/s)")
        if "b" in args.parts:
            b = results["throughput"] = bench_throughput(model, args.n, work, min(args.seed_n, args.n), args.rounds)
            rounds = ", ".join(f"{r:.0%}" for r in b["vs_ceiling_rounds"])
            seed_rounds = ", ".join(f"{r:.1f}x" for r in b.get("cli_vs_seed_rounds", []))
            line = (f"(b) score_paths {b['score_paths_img_s']:.1f} img/s over {b['images']} files | pure inference "
                    f"{b['ceiling_img_s']:.1f} img/s -> {b['vs_ceiling']:.0%} of the ceiling (median of {rounds}; "
                    f"target >= 85%: {'met' if b['vs_ceiling'] >= 0.85 else 'MISSED'}) | whole-process "
                    f"`pneumo-desktop score` {b['cli_img_s']:.1f} img/s | CPU per image: inference "
                    f"{b['ceiling_cpu_ms']:.1f} ms, score_paths {b['score_paths_cpu_ms']:.1f} ms "
                    f"({b['ceiling_cpu_ms'] / b['score_paths_cpu_ms']:.0%})")
            if "seed_loop_img_s" in b:
                line += (f" | study-style loop {b['seed_loop_img_s']:.2f} img/s over {b['seed_images']} files a "
                         f"round -> "
                         f"score command {b['cli_vs_seed']:.1f}x (median of {seed_rounds}; target >= 12x: "
                         f"{'met' if b['cli_vs_seed'] >= 12 else 'MISSED'}), score_paths {b['vs_seed']:.1f}x")
            else:
                line += f" | seed loop {b['seed_loop']}"
            print(line)
        results["load_average_after"] = os.getloadavg()
        print(f"load average (1, 5, 15 min) at the start {results['load_average_before']}, at the end "
              f"{tuple(round(x, 1) for x in results['load_average_after'])} on {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
