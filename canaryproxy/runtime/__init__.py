"""The proxy at run time: one ``Service`` per configured service owning its state, judge,
health and series (``service``), and the loops that probe backends and tick (``loops``)."""
