"""canaryproxy: a reverse proxy that makes canary releases safe."""

__version__ = "0.1.0"
