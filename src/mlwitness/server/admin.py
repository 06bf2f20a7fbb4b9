"""What the sidecar puts on the ledger besides calls: the column names --features gives,
the baseline, each guard version (admin records in the chain) and each version of the
model file it pins (the model store), so that the ledger says under which of them every
later call was recorded."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlwitness.analytics.baseline import Baseline, store_baseline
from mlwitness.errors import ConfigError, ModelNotSettled
from mlwitness.guards.checks import guard_record
from mlwitness.guards.file import GuardConfig
from mlwitness.ledger import store
from mlwitness.ledger.record import Record
from mlwitness.ledger.rows import features_detail
from mlwitness.ledger.writer import LedgerWriter
from mlwitness.model.runtime import OnnxModel, is_not_a_model
from mlwitness.model.signature import Signature
from mlwitness.server.columns import known_columns, warn_unknown
from mlwitness.settings import Settings


def _admin(detail: str) -> Record:
    now = time.time_ns() // 1000
    return Record(kind="admin", request_id=uuid.uuid4().hex, received_us=now,
                  responded_us=now, peer="startup", detail=detail)


async def record_guards(ledger: LedgerWriter, config: GuardConfig, *, mode: str, source: str,
                        caller: str) -> None:
    """Put a guard version on the ledger (an "admin" record in the chain)."""
    await ledger.append(guard_record(config, mode=mode, source=source, caller=caller))


async def announce_features(ledger: LedgerWriter) -> None:
    """Put the column names --features gives on the chain (an "admin" record) when they
    differ from the last ones announced, before any call uses them: they are not in a
    call's bytes, and verify derives the records after it with them."""
    names = {tensor: tuple(n) for tensor, n in ledger.tabulator.feature_names.items()}
    if names == (ledger.announced_features or {}):
        return
    await ledger.append(_admin(features_detail(names)))


async def store_baseline_file(ledger: LedgerWriter, path: Any,
                              signature: Signature) -> Baseline:
    """Keep the baseline in the ledger (content-addressed) and say so in the chain."""
    try:
        baseline = Baseline.from_json(Path(path).read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--baseline {path} is not a baseline file: {exc}") from exc
    warn_unknown("baseline", [c for c in baseline.columns if c != baseline.label],
                 known_columns(ledger.tabulator, signature))
    sha = ledger.write(lambda con: store_baseline(con, baseline, Path(path).name))
    await ledger.append(_admin(json.dumps({"action": "baseline", "sha256": sha,
                                           "source": str(path)}, sort_keys=True)))
    return baseline


def model_store(ledger: LedgerWriter, settings: Settings) -> Callable[[bytes], None]:
    """What `ModelFile` calls with each new version of the model file: store its bytes
    (with their signature where onnxruntime can read one) before any record names them."""
    s = settings

    def store_model(onnx: bytes) -> None:
        try:
            signature = OnnxModel(onnx).signature.to_dict()
        except Exception as exc:  # the upstream's business; we still pin the bytes
            if not onnx or is_not_a_model(exc):  # a copy going on
                raise ModelNotSettled(f"model file {s.model} is not a whole ONNX model yet "
                                      f"({len(onnx)} bytes onnxruntime cannot parse); keeping "
                                      "the pinned model and trying again at the next poll"
                                      ) from None
            signature = {"inputs": [], "outputs": [], "error": str(exc)}
        ledger.write(
            lambda con: store.put_model(con, onnx, s.served_name, s.model_version, signature)
        )

    return store_model
