"""The canary's error budget, decided without I/O: the comparative test, the backstop, the
stable guard, and the verdict (``budget``), over a sliding window (``window``)."""
