"""A model's tensor signature (names, v2 datatypes, shapes with -1 for dynamic dims), and
the checks a request must pass against it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from mlwitness.codec import Tensor, datatype_from_onnx
from mlwitness.errors import InvalidInput


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]
    # The ONNX graph's names of symbolic dims ("batch", "N"; None for the others). A name
    # used by several inputs stands for one size (exporters name the batch dim this way).
    dim_names: tuple[str | None, ...] = field(default=(), compare=False)

    def describe(self) -> str:
        return f"{self.name} ({self.datatype} {list(self.shape)})"

    def accepts_shape(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.shape) and all(
            want < 0 or want == got for want, got in zip(self.shape, shape, strict=True)
        )


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_session(cls, session: Any) -> Signature:
        def specs(nodes: Any) -> tuple[TensorSpec, ...]:
            return tuple(
                TensorSpec(
                    node.name,
                    datatype_from_onnx(node.type),
                    tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape),
                    tuple(d if isinstance(d, str) else None for d in node.shape),
                )
                for node in nodes
            )

        return cls(specs(session.get_inputs()), specs(session.get_outputs()))

    def to_dict(self) -> dict[str, Any]:
        return {
            kind: [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]
            for kind, specs in (("inputs", self.inputs), ("outputs", self.outputs))
        }

    # Looked up on every call: built once (a frozen dataclass still takes cached properties)
    @cached_property
    def _by_name(self) -> dict[str, TensorSpec]:
        return {s.name: s for s in self.inputs}

    @cached_property
    def _output_names(self) -> frozenset[str]:
        return frozenset(s.name for s in self.outputs)

    @cached_property
    def _named_dims(self) -> bool:
        return any(d is not None for s in self.inputs for d in s.dim_names)

    def input(self, name: str) -> TensorSpec | None:
        return self._by_name.get(name)

    def check_names(self, names: Iterable[str]) -> None:
        """Raise InvalidInput for the first input name that is unknown or repeated, then for
        a missing one. Every name past the model's input count is one of those, so this
        stops within that many steps however many inputs a request claims."""
        given: set[str] = set()
        for name in names:  # unknown names first: a misnamed input is named as sent
            if self.input(name) is None:
                raise InvalidInput(f"unknown input '{name}'; the model takes: "
                                   f"{self._list(self.inputs)}")
            if name in given:
                raise InvalidInput(f"input {name!r} appears more than once; input names "
                                   "must be unique")
            given.add(name)
        for wanted in self.inputs:
            if wanted.name not in given:
                raise InvalidInput(f"missing input {wanted.describe()}; the model takes: "
                                   f"{self._list(self.inputs)}")

    def check_inputs(self, tensors: Sequence[Tensor]) -> None:
        """Raise InvalidInput naming the first tensor that does not fit the model."""
        self.check_names(t.name for t in tensors)
        for tensor in tensors:
            spec = self.input(tensor.name)
            assert spec is not None
            if tensor.datatype != spec.datatype:
                raise InvalidInput(f"input '{tensor.name}' has datatype {tensor.datatype}; "
                                   f"the model expects {spec.datatype}")
            if not spec.accepts_shape(tensor.shape):
                raise InvalidInput(f"input '{tensor.name}' has shape {list(tensor.shape)}; "
                                   f"the model expects {list(spec.shape)} (-1: any size)")
        self._check_shared_dims(tensors)

    def _check_shared_dims(self, tensors: Sequence[Tensor]) -> None:
        if not self._named_dims:
            return
        seen: dict[str, tuple[str, int]] = {}  # dim name -> (first input with it, its size)
        for tensor in tensors:
            spec = self.input(tensor.name)
            assert spec is not None
            for dim, size in zip(spec.dim_names, tensor.shape, strict=False):
                if dim is None:
                    continue
                first, first_size = seen.setdefault(dim, (tensor.name, size))
                if size != first_size:
                    raise InvalidInput(
                        f"input '{tensor.name}' has shape {list(tensor.shape)}; the model's "
                        f"dim '{dim}' is {first_size} in input '{first}', and must be the "
                        "same size in every input that has it")

    def check_outputs(self, names: Sequence[str]) -> None:
        known = self._output_names
        for name in names:
            if name not in known:
                raise InvalidInput(f"unknown requested output '{name}'; the model produces: "
                                   f"{self._list(self.outputs)}")
        if len(set(names)) != len(names):
            raise InvalidInput("an output is requested twice")

    LISTED = 20  # a message names at most this many tensors of a wide signature

    @classmethod
    def _list(cls, specs: Sequence[TensorSpec]) -> str:
        listed = ", ".join(s.describe() for s in specs[: cls.LISTED])
        more = len(specs) - cls.LISTED
        return f"{listed} and {more} more (see ModelMetadata)" if more > 0 else listed
