"""The main process's HTTP side: the two APIs, the request path they share, ops, edge, CLI."""
