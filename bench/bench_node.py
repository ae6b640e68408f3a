"""Soak benchmark of `pneumo-desktop listen`: N instances from concurrent storescu senders, one SIGKILL.

What runs (all real, on localhost): Orthanc as the PACS, the listener as its own process sending each
result (SR + SC) to Orthanc by C-STORE, and --senders DCMTK storescu processes, each sending its share of
the N DX instances (made from the bundled samples, downscaled to at most --side px, each with its own UIDs).
When --kill-at of the N are in the spool the listener gets SIGKILL and is started again; a sender whose
storescu failed sends its whole share again (what a modality does), so duplicates arrive too.

Reported: lost (instances without both an SR and an SC in Orthanc), duplicated (extra CSV rows, extra
objects in Orthanc), sustained throughput (results stored in Orthanc per second, from the first instance
sent to the last SR stored, the restart included; also the best 10 s window), the listener's RSS over
time (sampled from /proc every second), and the CPU seconds the listener and Orthanc used per instance
(independent of the machine's other load, unlike the throughput). The listener's figures include its
child process (the one that builds the SRs and SCs), and the bench checks that the killed listener's
child ended with it. Linux only (/proc).

Usage: python bench/bench_node.py [--count 1000] [--senders 4] [--kill-at 0.5] [--side 1024] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402

from pneumo_desktop.core.dicom_node.convert import Identity, dx_from_grey  # noqa: E402
from pneumo_desktop.core.dicom_node.results_dicom import result_uids  # noqa: E402
from pneumo_desktop.core.imaging import load_image  # noqa: E402
from pneumo_desktop.core.model_card import load_model_card  # noqa: E402
from pneumo_desktop.core.resources import bundled_model_dir, samples_dir  # noqa: E402
from tests.dicom_node_support import free_port, start_listener, start_orthanc  # noqa: E402


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat), its threads included."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The process's child processes (the node's results process), from /proc."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


class ProcessTree:
    """CPU seconds and RSS of a listener with its child processes. A child's last reading is kept after it
    ends (the SIGKILL ends the listener's results process with it)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.last: dict[int, float] = {}

    def cpu_s(self) -> float:
        for pid in (self.pid, *children(self.pid)):
            used = cpu_s(pid)
            if used is not None:
                self.last[pid] = used
        return sum(self.last.values())

    def rss_mb(self) -> float | None:
        own = rss_mb(self.pid)
        if own is None:
            return None
        return own + sum(rss_mb(child) or 0.0 for child in children(self.pid))


def make_instances(folder: Path, count: int, side: int) -> list[tuple[Path, Identity]]:
    from pydicom.uid import generate_uid

    greys = []
    for path in sorted(samples_dir().glob("*.jpeg")):
        grey = load_image(path).grey
        scale = min(1.0, side / max(grey.shape))
        if scale < 1.0:
            grey = cv2.resize(grey, (round(grey.shape[1] * scale), round(grey.shape[0] * scale)),
                              interpolation=cv2.INTER_AREA)
        greys.append(grey)
    out = []
    study = series = ""
    for index in range(count):
        if index % 10 == 0:  # ten instances per study
            study, series = generate_uid(), generate_uid()
        identity = Identity(f"BENCH{index // 10:05d}", "BENCH^PATIENT", study, series, generate_uid())
        target = folder / f"{index:05d}.dcm"
        dx_from_grey(greys[index % len(greys)], identity).save_as(target, enforce_file_format=True)
        out.append((target, identity))
    return out


class Sender(threading.Thread):
    """One modality: storescu on its share; resends the whole share while storescu fails (listener down)."""

    def __init__(self, port: int, files: list[Path], deadline: float) -> None:
        super().__init__(daemon=True)
        self.port, self.files, self.deadline = port, files, deadline
        self.attempts = 0

    def run(self) -> None:
        while time.monotonic() < self.deadline:
            self.attempts += 1
            result = subprocess.run(["storescu", "-aet", f"MOD{id(self) % 1000}", "-aec", "PNEUMO", "127.0.0.1",
                                     str(self.port), *map(str, self.files)], capture_output=True)
            if result.returncode == 0:
                return
            time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction received when the SIGKILL comes")
    parser.add_argument("--side", type=int, default=1024, help="longest side of the test images (px)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, spool, Orthanc)")
    args, _unknown = parser.parse_known_args(argv)  # run_all.py passes its extra arguments to every bench
    for tool in ("Orthanc", "storescu"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"bench_node: {tool} is not installed (Debian packages orthanc, dcmtk): skipped")
            return 0

    work = Path(tempfile.mkdtemp(prefix="bench-node-"))
    try:
        return _run(args, work)
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path) -> int:
    print(f"making {args.count} DX instances (<= {args.side} px) ...", flush=True)
    (work / "dx").mkdir()
    instances = make_instances(work / "dx", args.count, args.side)
    port = free_port()
    orthanc = start_orthanc(work / "orthanc", listener_port=port)
    spool, csv_path = work / "spool", work / "results.csv"
    listen_args = ("--send-to", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", "-o", str(csv_path))
    listeners = [start_listener(spool, port, *listen_args, log_name="listen1.log")]
    rss: list[tuple[float, int, float]] = []  # (seconds, listener run, MB)
    progress: list[tuple[float, int]] = []  # (seconds, results stored in Orthanc)
    queues: list[tuple[float, int, int]] = []  # (seconds, instances waiting to be scored, results to send)
    start = time.monotonic()
    deadline = start + args.timeout
    shares = [[p for p, _ in instances[i :: args.senders]] for i in range(args.senders)]
    senders = [Sender(port, share, deadline) for share in shares]
    for sender in senders:
        sender.start()
    killed_at = None
    cpu: dict[int, float] = {}  # listener run -> its CPU seconds (last reading)
    trees = [ProcessTree(listeners[0].process.pid)]  # the listener and its results process, per run
    startup = {1: trees[0].cpu_s()}  # listener run -> CPU seconds to start (model load)
    orthanc_cpu_start = cpu_s(orthanc.process.pid) or 0.0
    try:
        while time.monotonic() < deadline:
            now = time.monotonic() - start
            value = trees[-1].rss_mb()
            if value is not None:
                rss.append((now, len(listeners), value))
            stored = orthanc.get("/statistics")["CountInstances"]
            progress.append((now, stored))
            waiting = sum(1 for _ in (spool / "incoming").glob("*.dcm"))
            received = sum(1 for _ in (spool / "done").iterdir()) + waiting
            queues.append((now, waiting, sum(1 for _ in (spool / "outbox").glob("*/*.dcm"))))
            cpu[len(listeners)] = trees[-1].cpu_s()
            if killed_at is None and received >= args.kill_at * args.count:
                cpu[1] = trees[-1].cpu_s()
                listeners[-1].kill()
                killed_at = now
                print(f"SIGKILL at {now:.1f} s with {received} received; restarting", flush=True)
                listeners.append(start_listener(spool, port, *listen_args, log_name="listen2.log"))
                trees.append(ProcessTree(listeners[-1].process.pid))
                startup[2] = trees[-1].cpu_s()
            if stored >= 2 * args.count and all(not s.is_alive() for s in senders):
                break
            time.sleep(1.0)
    finally:
        cpu[len(listeners)] = trees[-1].cpu_s()
        orthanc_cpu = (cpu_s(orthanc.process.pid) or 0.0) - orthanc_cpu_start
        for listener in listeners:
            listener.stop()
    end = progress[-1][0]
    # the killed listener's child processes must end with it (they read their work from its pipe)
    orphans = [pid for tree in trees[:-1] for pid in tree.last if pid != tree.pid and Path(f"/proc/{pid}").exists()]
    figures = _verify(orthanc, instances, csv_path)
    orthanc.stop()
    first = next((t for t, n in progress if n > 0), end)
    results = figures["sources_with_sr_and_sc"]
    window = max((b[1] - a[1]) / 2 / (b[0] - a[0]) for a, b in _pairs(progress, 10.0)) if len(progress) > 11 else 0.0
    figures.update({
        "count": args.count, "senders": args.senders, "kill_at_s": killed_at, "wall_s": round(end, 1),
        "sustained_per_s": round(results / end, 2) if end else 0.0,
        "sustained_after_first_result_per_s": round(results / (end - first), 2) if end > first else 0.0,
        "best_10s_window_per_s": round(window, 2),
        "rss_mb": {f"run{run}": _summary([mb for _, r, mb in rss if r == run]) for run in (1, 2)},
        "rss_series": [(round(t, 1), run, round(mb, 1)) for t, run, mb in rss],
        "stored_series": [(round(t, 1), n) for t, n in progress],  # (seconds, objects stored in Orthanc)
        "queue_series": [(round(t, 1), i, o) for t, i, o in queues],  # (seconds, to score, to send)
        "sender_attempts": [s.attempts for s in senders],
        "child_processes_left_after_the_kill": len(orphans),
        # CPU time does not depend on what else runs on the machine: the node's own cost per instance
        # (both listener runs, start-up and model loading included), and Orthanc's for storing the results
        "listener_cpu_s": round(sum(cpu.values()), 1),
        "listener_cpu_ms_per_instance": round(1000 * sum(cpu.values()) / args.count, 1),
        "listener_cpu_ms_per_instance_without_startup": round(
            1000 * (sum(cpu.values()) - sum(startup.values())) / args.count, 1),
        "orthanc_cpu_ms_per_instance": round(1000 * orthanc_cpu / args.count, 1),
        "load_average_1_5_15_at_end": [round(v, 2) for v in os.getloadavg()],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the end",
    })
    print(json.dumps({k: v for k, v in figures.items() if not k.endswith("_series")}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    ok = figures["lost"] == 0 and figures["duplicated"] == 0 and not figures["child_processes_left_after_the_kill"]
    return 0 if ok else 1


def _pairs(progress: list[tuple[float, int]], span: float):
    for i, a in enumerate(progress):
        for b in progress[i + 1 :]:
            if b[0] - a[0] >= span:
                yield a, b
                break


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"first": round(values[0], 1), "max": round(max(values), 1), "last": round(values[-1], 1),
            "samples": len(values)}


def _verify(orthanc, instances: list[tuple[Path, Identity]], csv_path: Path) -> dict:
    import csv

    sha = load_model_card(bundled_model_dir()).tflite_sha256
    stored = {i["MainDicomTags"].get("SOPInstanceUID") for i in orthanc.get("/instances?expand")}
    expected = set()
    complete = 0
    for _, identity in instances:
        uids = result_uids(identity.study_instance_uid, identity.sop_instance_uid, sha)
        expected |= {uids.sr_instance, uids.sc_instance}
        complete += uids.sr_instance in stored and uids.sc_instance in stored
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    uids_in_csv = [r["sop_instance_uid"] for r in rows]
    extra_rows = len(uids_in_csv) - len(set(uids_in_csv))
    extra_objects = len(stored - expected)
    return {"sources_with_sr_and_sc": complete, "lost": len(instances) - complete,
            "duplicated": extra_rows + extra_objects, "csv_rows": len(rows),
            "csv_missing": len({i.sop_instance_uid for _, i in instances} - set(uids_in_csv))}


if __name__ == "__main__":
    raise SystemExit(main())
