"""Send credit applications to an mlwitness sidecar with the stock Triton client.

    python examples/credit/send_requests.py --target 127.0.0.1:8701 --count 300

Each call is an ordinary Open Inference Protocol v2 request (tritonclient sends raw
tensor contents); the applicant's age band travels as a request parameter, which the
model never sees but the ledger keeps for bias tests.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_model import AGE_BANDS, make_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:8701")
    parser.add_argument("--model", default="credit")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)

    data = make_dataset(args.count, args.seed)
    features = np.column_stack([data[name] for name in
                                ("income", "debt_ratio", "fico", "age", "years_employed",
                                 "open_loans")]).astype(np.float32)
    client = triton.InferenceServerClient(args.target)
    approved = 0
    for i in range(args.count):
        tensor = triton.InferInput("input", [1, 6], "FP32")
        tensor.set_data_from_numpy(features[i : i + 1])
        band = str(data["age_band"][i])
        assert band in AGE_BANDS
        result = client.infer(args.model, [tensor], request_id=f"application-{i:05d}",
                              parameters={"age_band": band},
                              headers={"x-caller": "loan-origination-service"})
        approved += int(result.as_numpy("label")[0])
    print(f"sent {args.count} applications to {args.target}: {approved} approved, "
          f"{args.count - approved} declined")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
