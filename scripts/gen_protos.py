"""Regenerate the code in src/mlwitness/protocol/ from protos/ (the source of truth).

    python scripts/gen_protos.py           # write the generated files
    python scripts/gen_protos.py --check   # exit 1 if the committed files are stale

The Open Inference Protocol (package `inference`) is compiled to a binary descriptor set
that mlwitness loads into a private descriptor pool: tritonclient and other v2 libraries
register the same `inference.*` names in protobuf's default pool, and both must be able
to live in one process. The audit API (package `mlwitness.audit.v1`) is ordinary
generated Python with gRPC stubs.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "src" / "mlwitness" / "protocol"
INCLUDE = str(Path(protoc.__file__).parent / "_proto")

DESCRIPTOR_SETS = {"mlwitness/protocol/inference.proto": "inference.binpb"}
PYTHON_PROTOS = ["mlwitness/protocol/audit.proto"]
# Written by hand, never generated: the package and the module that loads inference.binpb.
HAND_WRITTEN = {"__init__.py", "inference.py"}


def _protoc(*args: str) -> None:
    code = protoc.main(["protoc", f"-I{PROTOS}", f"-I{INCLUDE}", *args])
    if code != 0:
        raise SystemExit(f"protoc failed ({code}): {' '.join(args)}")


def generate(into: Path) -> list[Path]:
    """Write every generated file under `into` (a src/ root); return the paths written."""
    written: list[Path] = []
    package_dir = into / "mlwitness" / "protocol"
    package_dir.mkdir(parents=True, exist_ok=True)
    for proto, name in DESCRIPTOR_SETS.items():
        _protoc(f"--descriptor_set_out={package_dir / name}", proto)
        written.append(package_dir / name)
    existing = [p for p in PYTHON_PROTOS if (PROTOS / p).exists()]
    if existing:
        _protoc(
            f"--python_out={into}",
            f"--pyi_out={into}",
            f"--grpc_python_out={into}",
            *existing,
        )
    written.extend(sorted(p for p in package_dir.iterdir() if p.name not in HAND_WRITTEN))
    return sorted(set(written))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated files are stale")
    args = parser.parse_args()
    if not args.check:
        for path in generate(ROOT / "src"):
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for path in fresh:
            committed = OUT / path.name
            if not committed.exists() or not filecmp.cmp(path, committed, shallow=False):
                stale.append(committed.relative_to(ROOT))
        fresh_names = {p.name for p in fresh}
        extra = [
            p.relative_to(ROOT)
            for p in OUT.iterdir()
            if p.is_file() and p.name not in HAND_WRITTEN and p.name not in fresh_names
        ]
    if stale or extra:
        for path in stale:
            print(f"stale: {path}", file=sys.stderr)
        for path in extra:
            print(f"not generated from protos/: {path}", file=sys.stderr)
        print("run: python scripts/gen_protos.py", file=sys.stderr)
        return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
