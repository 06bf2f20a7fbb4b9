"""The sidecar's checkpoints: the Merkle tree over its ledger, signed heads issued every
--checkpoint-interval and published to --checkpoint-dir (ledger/checkpoints.py,
ledger/publisher.py), all in their own thread, off the hot path."""

from __future__ import annotations

import logging

from mlwitness.errors import ConfigError
from mlwitness.evidence.note import NoteError, Signer
from mlwitness.ledger.checkpoints import Checkpointer
from mlwitness.ledger.publisher import Publisher
from mlwitness.ledger.writer import LedgerWriter
from mlwitness.settings import Settings

log = logging.getLogger("mlwitness")


def start_checkpoints(s: Settings, ledger: LedgerWriter, signer: Signer | None
                      ) -> Checkpointer | None:
    """The checkpointer (and its publisher) over the open ledger, started: its thread
    builds any missing tree and issues checkpoints. None with --checkpoint-interval 0."""
    if s.checkpoint_interval == 0:
        log.warning("--checkpoint-interval 0: no Merkle tree and no checkpoints; a "
                    "rewrite of the ledger is caught only by a head published elsewhere "
                    "(--expect-head)")
        return None
    publisher = Publisher(s.checkpoint_dir, ledger) if s.checkpoint_dir else None
    try:
        checkpointer = Checkpointer(ledger, signer=signer, origin=s.checkpoint_origin or "",
                                    interval_s=s.checkpoint_interval, publisher=publisher)
    except NoteError as exc:
        raise ConfigError(f"--checkpoint-origin: {exc}") from None
    checkpointer.start()
    signed = (f"signed by {checkpointer.key_id}" if signer is not None else
              "UNSIGNED (no --signing-key: they fix the tree, not who issued it)")
    log.info("checkpoints of log %s every %g s, %s", checkpointer.origin,
             s.checkpoint_interval, signed)
    if publisher is None:
        log.warning("checkpoints are kept in the ledger only (no --checkpoint-dir): "
                    "whoever can rewrite the ledger can rewrite them too; publish them "
                    "where its operator cannot")
    return checkpointer
