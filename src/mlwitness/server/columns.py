"""The ledger's column names for the served model, and the start-up checks of the names
that settings give (--features, --redact-inputs/--hash-inputs, guard and baseline files)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from mlwitness.errors import ConfigError
from mlwitness.ledger.rows import Tabulator
from mlwitness.model.signature import Signature, TensorSpec
from mlwitness.settings import Settings

log = logging.getLogger("mlwitness")


def tabulator_for(settings: Settings, signature: Signature) -> Tabulator:
    """Feature names apply to the model's first 2-D input with that many columns."""
    names = settings.features
    if not names:
        return Tabulator()
    for spec in signature.inputs:
        if len(spec.shape) == 2 and spec.shape[1] in (len(names), -1):
            return Tabulator({spec.name: tuple(names)})
    if len(signature.inputs) == len(names):
        return Tabulator()  # one tensor per feature: tensor names already name them
    raise ValueError(
        f"--features lists {len(names)} names but no 2-D model input has that many columns: "
        + ", ".join(s.describe() for s in signature.inputs)
    )


def known_columns(tabulator: Tabulator, signature: Signature) -> set[str]:
    """Column names the ledger will give this model's inputs and outputs."""
    return columns_of(tabulator, signature.inputs) | columns_of(tabulator, signature.outputs)


def columns_of(tabulator: Tabulator, specs: Iterable[TensorSpec]) -> set[str]:
    names: set[str] = set()
    for spec in specs:
        names.update(tabulator.columns_of(spec.name, spec.shape))
    return names


def check_minimised_names(names: list[str], tabulator: Tabulator,
                          signature: Signature) -> None:
    """Minimisation rewrites whole input tensors (and request parameters). A name that is
    only a *column* of a tensor (a --features name) would silently store that column in
    clear: refuse it, naming the tensor to minimise instead."""
    tensors = {spec.name for spec in signature.inputs}
    for name in names:
        if name in tensors:
            continue
        owner = next((spec.name for spec in signature.inputs
                      if name in columns_of(tabulator, [spec])), None)
        if owner is not None:
            raise ConfigError(
                f"--redact-inputs/--hash-inputs {name!r} is a column of input tensor "
                f"{owner!r}, not a tensor: minimisation applies to whole input tensors and "
                f"request parameters. Name the tensor ({owner!r}: all of its columns), or "
                "send the value as a request parameter")


def warn_unknown(what: str, columns: list[str], known: set[str]) -> None:
    """Guards or baseline columns that match no model column would silently never fire
    (request parameters are the legitimate exception: they are not known in advance)."""
    unknown = sorted(set(columns) - known)
    if unknown:
        log.warning("%s names columns the model has none of: %s (known: %s). They apply only "
                    "to request parameters of that name; check --features.", what,
                    ", ".join(unknown), ", ".join(sorted(known)))
