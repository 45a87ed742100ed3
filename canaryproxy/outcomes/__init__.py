"""What the proxy tells the world about requests: Prometheus series (``metrics``), the
access log (``accesslog``), structured process logs (``logs``), and the ``recorder`` that
routes each outcome the engine reports to the service that owns it."""
