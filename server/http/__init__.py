"""The server's HTTP listener (metrics, console)."""
