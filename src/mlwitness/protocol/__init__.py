"""The two gRPC protocols. Generated from protos/ by `python scripts/gen_protos.py` (never
edited by hand): `inference.binpb` (the Open Inference Protocol v2 descriptor set) and
`audit_pb2*` (the audit API). Written by hand: `inference`, which loads the v2 message
classes from that descriptor set into a private pool."""
