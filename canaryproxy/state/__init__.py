"""Runtime changes that must survive a restart: the knobs of each service and the one way
they change (``runtime``), persisted with an audit line by the SQLite store (``store``)."""
