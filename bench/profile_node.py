"""Where the DICOM node's time goes, per instance: each step of the scorer's pipeline timed on its own.

The same DX instances as bench_node.py (the samples, <= --side px, own UIDs) are put in a spool the way the
listener stores them; then each step the scorer runs (service.NodeService.score) is timed separately, in
CPU time of this process (the model's and numpy's threads included), which does not depend on what else
the machine runs; wall time is shown too. With --orthanc, the results are also sent to a real Orthanc
by C-STORE over one kept association (the sender's step), and --cprofile prints the top functions of a
whole NodeService.score run.

Usage: python bench/profile_node.py [--count 48] [--side 1024] [--orthanc] [--cprofile]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as `pneumo-desktop listen` sets it (cli/listen.py)

import numpy as np  # noqa: E402
from bench_node import make_instances  # noqa: E402
from pydicom import dcmread  # noqa: E402

from pneumo_desktop.cli.listen import MODEL_THREADS  # noqa: E402
from pneumo_desktop.core.dicom_node.config import Peer  # noqa: E402
from pneumo_desktop.core.dicom_node.result_image import picture_size, render_result_rgbx  # noqa: E402
from pneumo_desktop.core.dicom_node.results_csv import NodeResultsCsv  # noqa: E402
from pneumo_desktop.core.dicom_node.results_dicom import build_sc, build_sr, encode, result_uids  # noqa: E402
from pneumo_desktop.core.dicom_node.send import PeerConnection  # noqa: E402
from pneumo_desktop.core.dicom_node.service import NodeService  # noqa: E402
from pneumo_desktop.core.dicom_node.spool import Spool  # noqa: E402
from pneumo_desktop.core.imaging import decode_image  # noqa: E402
from pneumo_desktop.core.resources import bundled_model_dir  # noqa: E402
from pneumo_desktop.core.runtime import PneumoniaModel  # noqa: E402


class Clock:
    """CPU and wall seconds per named step."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)

    def time(self, name: str, function, *args):
        cpu, wall = time.process_time(), time.perf_counter()
        result = function(*args)
        self.cpu[name] += time.process_time() - cpu
        self.wall[name] += time.perf_counter() - wall
        return result


def profile_steps(model: PneumoniaModel, spool: Spool, clock: Clock) -> dict[str, list[tuple[str, bytes]]]:
    """Each step of NodeService.score, one instance at a time (the model in full batches where it can)."""
    pending = spool.pending()
    size = model.batch_size
    queued: dict[str, list[tuple[str, bytes]]] = {"dest": []}
    for start in range(0, len(pending), size):
        chunk = pending[start : start + size]
        loaded = []
        for item in chunk:
            data = clock.time("read the spooled file", item.path.read_bytes)
            image = clock.time("decode the pixels", decode_image, data, item.path)
            header = clock.time("parse the header", lambda d=data: dcmread(io.BytesIO(d), stop_before_pixels=True))
            clock.time("sha256 of the file", lambda d=data: hashlib.sha256(d).hexdigest())
            loaded.append((item, image, header))
        images = [image for _, image, _ in loaded]
        inputs = clock.time("preprocess (area resize to the input)",
                            lambda chosen=images: np.stack([model.prepare(image) for image in chosen]))
        if len(chunk) == size:
            raw = clock.time("model (LiteRT)", model.run, inputs)
            raws = [(raw, i) for i in range(len(chunk))]
        else:
            raws = [(clock.time("model (LiteRT)", model.run, inputs[i : i + 1]), 0) for i in range(len(chunk))]
        for (_item, image, header), (raw, i) in zip(loaded, raws):
            prediction = clock.time("prediction (calibration, levels)", lambda r=raw, j=i, im=image: model.prediction(
                im.path, r.probability[j], **r.extras(j)))
            cam = None if prediction.refused else clock.time(
                "Grad-CAM map at the picture's size", raw.cam, i, *picture_size(image.height, image.width))
            uids = result_uids(str(header.StudyInstanceUID), str(header.SOPInstanceUID), prediction.model_sha256)
            sr = clock.time("SR: build the dataset", build_sr, header, prediction, uids)
            sr_bytes = clock.time("SR: encode", encode, sr)
            rgb = clock.time("SC: render the picture", render_result_rgbx, image.grey, cam, prediction)
            sc = clock.time("SC: build the dataset", build_sc, header, rgb, prediction, uids)
            sc_bytes = clock.time("SC: encode", encode, sc)
            queued["dest"] += [(uids.sr_instance, sr_bytes), (uids.sc_instance, sc_bytes)]
    return queued


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--orthanc", action="store_true", help="also time sending the results to a real Orthanc")
    parser.add_argument("--cprofile", action="store_true", help="also profile whole NodeService.score runs")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="profile-node-"))
    try:
        (work / "dx").mkdir()
        instances = make_instances(work / "dx", args.count, args.side)
        model = PneumoniaModel.load(bundled_model_dir(), num_threads=MODEL_THREADS)  # as the listener loads it
        spool = Spool(work / "spool", 10**13, 0)
        clock = Clock()
        for path, identity in instances:
            clock.time("receive: store durably in the spool", spool.receive, identity.sop_instance_uid,
                       path.read_bytes(), "BENCH")
        queued = profile_steps(model, spool, clock)
        clock.time("queue the results durably (outbox)", spool.queue_results, queued)
        clock.time("mark done, remove received files", spool.mark_done, [(p, "scored") for p in spool.pending()])
        if args.orthanc:
            _time_sending(work, spool, clock)
        _report(clock, args.count)
        if args.cprofile:
            _cprofile(work, model, instances)
        spool.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _time_sending(work: Path, spool: Spool, clock: Clock) -> None:
    from tests.dicom_node_support import start_orthanc

    orthanc = start_orthanc(work / "orthanc")
    try:
        connection = PeerConnection(Peer("ORTHANC", "127.0.0.1", orthanc.dicom_port), "PNEUMO")
        files = spool.queued("dest")
        results = clock.time("send SR + SC to Orthanc (C-STORE, kept association)", connection.send, files)
        connection.close()
        assert all(r.outcome.value == "sent" for r in results), results[:3]
    finally:
        orthanc.stop()


def _report(clock: Clock, count: int) -> None:
    total_cpu, total_wall = sum(clock.cpu.values()), sum(clock.wall.values())
    print(f"\nper instance, {count} instances (CPU ms of this process; wall ms)")
    for name in sorted(clock.cpu, key=lambda n: -clock.cpu[n]):
        print(f"  {name:<58} {1000 * clock.cpu[name] / count:7.2f}  {1000 * clock.wall[name] / count:7.2f}")
    print(f"  {'total':<58} {1000 * total_cpu / count:7.2f}  {1000 * total_wall / count:7.2f}")


def _cprofile(work: Path, model: PneumoniaModel, instances) -> None:
    spool = Spool(work / "spool2", 10**13, 0)
    csv = NodeResultsCsv(work / "results.csv")
    service = NodeService(spool, model, csv, [], "PNEUMO")
    for path, identity in instances:
        spool.receive(identity.sop_instance_uid, path.read_bytes(), "BENCH")
    profiler = cProfile.Profile()
    profiler.enable()
    while batch := spool.pending(limit=model.batch_size):
        service.score(batch)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    csv.close()
    spool.close()


if __name__ == "__main__":
    raise SystemExit(main())
