"""Moving bytes: the client side (``server``), the backend side (``upstream``), and the
``exchange`` that is the only broker between them; ``deadline`` is their one timer."""
