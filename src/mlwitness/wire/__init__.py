"""gRPC wire layer: message classes, servicers, status mapping. The core never imports it."""
