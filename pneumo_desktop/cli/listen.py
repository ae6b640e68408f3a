"""`pneumo-desktop listen`: a DICOM node that scores the X-rays sent to it and sends results back as DICOM.

One row of COMMANDS in dispatch.py; it sets up its own logging (a long-running service). Settings: built-in
defaults, then the TOML file (`dicom_node.toml` in the config folder, or --config), then the command line.
See docs/DICOM_NODE.md.
Exit status: 0 stopped (Ctrl+C, SIGTERM); 2 bad options or config file; 3 model missing or corrupt;
4 the port cannot be opened; 5 another listener uses the spool.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from pneumo_desktop import RESEARCH_USE_STATEMENT

PROG = "pneumo-desktop listen"
EXIT_OK, EXIT_USAGE, EXIT_MODEL, EXIT_PORT, EXIT_LOCKED = 0, 2, 3, 4, 5

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, help="TCP port to listen on (default 11112)")
    parser.add_argument("--ae-title", help="this node's AE title (default PNEUMO)")
    parser.add_argument("--bind", help="address to listen on (default 0.0.0.0: every interface)")
    parser.add_argument("--allow", nargs="+", metavar="AE", help="accept only these calling AE titles")
    parser.add_argument("--send-to", nargs="+", metavar="AE@HOST:PORT",
                        help="send the results (SR and SC) to these peers (or names of [[peers]] in the config)")
    parser.add_argument("--stow", metavar="URL", help="also send the results by STOW-RS to this DICOMweb base URL")
    parser.add_argument("--spool", type=Path, metavar="DIR", help="where received and outgoing files wait")
    parser.add_argument("-o", "--output", type=Path, metavar="CSV", help="results CSV (default: SPOOL/results.csv)")
    parser.add_argument("--profile", metavar="NAME", help="use this site profile's threshold")
    parser.add_argument("--threshold", type=float, metavar="T", help="decision threshold (overrides any profile)")
    parser.add_argument("--model", type=Path, metavar="DIR", help="model folder (default: the bundled model)")
    parser.add_argument("--tls-cert", type=Path, metavar="FILE", help="this node's TLS certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (PEM)")
    parser.add_argument("--tls-ca", type=Path, metavar="FILE", help="require callers' certificates signed by this CA")
    parser.add_argument("--max-associations", type=int, metavar="N", help="concurrent associations (default 8)")
    parser.add_argument("--send-associations", type=int, metavar="N",
                        help="concurrent associations (or STOW-RS requests) per destination (default 4)")
    parser.add_argument("--max-instance-mb", type=float, metavar="MB", help="largest instance accepted (default 256)")
    parser.add_argument("--spool-max-mb", type=float, metavar="MB",
                        help="most data waiting in the spool; beyond it senders get 0xA700 (default 20480)")
    parser.add_argument("--min-free-mb", type=float, metavar="MB", help="disk space always left free (default 512)")
    parser.add_argument("--config", type=Path, metavar="FILE", help="settings file (default: dicom_node.toml in "
                        "the app's config folder)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every instance received and sent")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Receive X-rays by DICOM (C-STORE), score them, and send a structured report and a "
                    "heat-map image back into each study. " + RESEARCH_USE_STATEMENT,
        epilog="exit status: 0 stopped; 2 bad options or config; 3 model missing or corrupt; "
               "4 port unavailable; 5 spool in use by another listener. See docs/DICOM_NODE.md.",
    )
    add_arguments(parser)
    return parser


_OPTION_KEYS = ("port", "ae_title", "bind", "allow", "send_to", "stow", "spool", "output", "profile", "threshold",
                "model", "tls_cert", "tls_key", "tls_ca", "max_associations", "max_instance_mb", "spool_max_mb",
                "min_free_mb", "send_associations")


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


# The node runs its receivers, senders and the scorer at once, on machines where the PACS often runs too:
# a second BLAS thread for the preprocessing's matrix products mostly spins waiting for a core (it cost 3-4
# times the CPU of one thread on 2 busy cores, bench/profile_node.py). Set before numpy loads (nothing
# before this command imports it); a value the user set wins.
BLAS_THREADS_ENV = ("OPENBLAS_NUM_THREADS", "1")
# Likewise the model runs on one LiteRT thread in the node. It costs less CPU per image when the cores are
# busy (a batch of 8 on 2 shared cores: 23.6 ms of CPU per image on one thread, 28.2 on two; the same
# probabilities), and the other core is not left idle: the node builds the previous batch's SR and SC while
# the model runs (service.py), and receives and sends meanwhile.
MODEL_THREADS: int | None = 1


def run(argv: Sequence[str]) -> int:
    if "numpy" not in sys.modules:  # (in a process that already loaded it, e.g. a test, it would not apply)
        os.environ.setdefault(*BLAS_THREADS_ENV)
    try:
        parsed = _parser().parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    level = logging.INFO if parsed.verbose else logging.WARNING
    logging.basicConfig(level=logging.WARNING, format="pneumo-desktop listen: %(levelname)s: %(message)s")
    logging.getLogger("pneumo_desktop").setLevel(level)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING if parsed.verbose else logging.ERROR)

    from pneumo_desktop.core.dicom_node.config import NodeConfigError, apply, load_config
    from pneumo_desktop.core.dicom_node.spool import SpoolLockedError
    from pneumo_desktop.core.model_card import ModelIntegrityError
    from pneumo_desktop.core.runtime import PneumoniaModel
    from pneumo_desktop.core.site_profiles import ProfileError, resolve_threshold

    try:
        config = apply(load_config(parsed.config), {k: getattr(parsed, k) for k in _OPTION_KEYS})
    except NodeConfigError as exc:
        _error(str(exc))
        return EXIT_USAGE
    try:
        model = PneumoniaModel.load(config.model, num_threads=MODEL_THREADS)
    except ModelIntegrityError as exc:
        _error(f"model integrity error: {exc}")
        return EXIT_MODEL
    try:
        choice = resolve_threshold(model.card.threshold, model.sha256, threshold=config.threshold,
                                   profile=config.profile)
        model.use_operating_point(choice)
    except (ProfileError, ValueError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    if choice.note:
        print(f"{PROG}: note: {choice.note}", file=sys.stderr)

    from pneumo_desktop.core.dicom_node.node import Node

    try:
        node = Node(config, model)
    except SpoolLockedError as exc:
        _error(str(exc))
        return EXIT_LOCKED
    except (OSError, ValueError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _serve(node, config, model, stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _serve(node, config, model, stop: threading.Event) -> int:  # Node, NodeConfig, PneumoniaModel
    try:
        node.start()
    except OSError as exc:
        node.close()
        _error(f"cannot listen on {config.bind}:{config.port}: {exc}")
        return EXIT_PORT
    targets = ", ".join(d.label for d in node.service.destinations) or "none (results go to the CSV only)"
    print(f"{PROG}: {config.ae_title} listening on {config.bind}:{node.listener.port}; model {model.describe()}, "
          f"threshold {model.operating_point.value:.4f} ({model.operating_point.source}); results to {targets}; "
          f"spool {node.spool.root}", file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        node.close()
    return EXIT_OK
