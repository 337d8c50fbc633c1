"""Generated protobuf and gRPC code for package mps.snapshot.v1 (see protos/)."""
