"""HTTP listener and the MPS HTTP RPC protocol (Alibaba Cloud SDK compatibility)."""
