"""The whole node: spool, results CSV, scorer and senders, and the listener, started and stopped together."""

from __future__ import annotations

import logging
import threading

from pneumo_desktop.core.dicom_node.config import NodeConfig
from pneumo_desktop.core.dicom_node.results_csv import NodeResultsCsv
from pneumo_desktop.core.dicom_node.results_process import ResultsProcess
from pneumo_desktop.core.dicom_node.scp import StorageListener
from pneumo_desktop.core.dicom_node.send import Destination
from pneumo_desktop.core.dicom_node.service import NodeService
from pneumo_desktop.core.dicom_node.spool import MB, Spool
from pneumo_desktop.core.runtime import PneumoniaModel

log = logging.getLogger(__name__)


def destinations(config: NodeConfig) -> list[Destination]:
    out = [Destination(peer=peer) for peer in config.destinations()]
    if config.stow:
        out.append(Destination(stow_url=config.stow))
    return out


class Node:
    def __init__(self, config: NodeConfig, model: PneumoniaModel) -> None:
        self.config = config
        self.spool = Spool(config.spool_dir(), int(config.spool_max_mb * MB), int(config.min_free_mb * MB))
        try:
            self.csv = NodeResultsCsv(config.results_csv())
            self.service = NodeService(self.spool, model, self.csv, destinations(config), config.ae_title,
                                       config.retry_max_s, config.send_associations, ResultsProcess())
            self.listener = StorageListener(config, self.spool, on_stored=self.service.notify)
        except BaseException:
            self.spool.close()
            raise

    def start(self) -> None:
        waiting = len(self.spool.pending())
        if waiting:
            log.info("%d received instance(s) from before a restart are scored first", waiting)
        self.service.start()
        self.listener.start()

    def serve(self, stop: threading.Event) -> None:
        """Start, run until `stop` is set, then stop (the spool keeps whatever is not finished)."""
        self.start()
        try:
            stop.wait()
        finally:
            self.close()

    def close(self) -> None:
        self.listener.shutdown()
        self.service.stop()
        self.csv.close()
        self.spool.close()
