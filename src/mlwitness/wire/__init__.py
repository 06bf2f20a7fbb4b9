"""gRPC wire layer: servicers, status mapping, identity, slots. The core never imports it."""
