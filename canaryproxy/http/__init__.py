"""HTTP/1.1 rules as pure functions: header grammar, hop-by-hop sets, the request head.

Lowest layer of the engine: imports nothing of the proxy but ``vocabulary``."""
