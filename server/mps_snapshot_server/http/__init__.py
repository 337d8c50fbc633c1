"""The HTTP listener: the MPS HTTP RPC protocol (Alibaba Cloud SDK compatibility) on /, metrics, console."""
