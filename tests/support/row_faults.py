"""A record decoder that injects the one fault building a record's rows meets in tests.

For a record whose request id starts with `unbuildable`, `decode_or_fault` adds to what
its bytes decode to a text value Arrow cannot hold (a lone surrogate), so that its rows
cannot be built; every other record decodes as the sidecar's decoder decodes it. The
ledger writer uses it in its loader thread, and the table builder child imports it by
name (a test puts this directory on the child's PYTHONPATH).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlwitness.codec import Tensor
from mlwitness.ledger.record import Record
from mlwitness.ledger.tensors import decode_record_tensors

UNBUILDABLE = "unbuildable"


def decode_or_fault(record: Record) -> tuple[list[Any], list[Any], dict[str, str]]:
    inputs, outputs, parameters = decode_record_tensors(record)
    if record.request_id.startswith(UNBUILDABLE):
        bad = np.empty(1, dtype=object)
        bad[0] = "\ud800"
        inputs = [*inputs, Tensor("band", "BYTES", (1,), bad)]
    return inputs, outputs, parameters
