"""The configuration file: YAML in, frozen typed objects out, every error named by its key.

``load`` reads and validates a file (``load_config``, ``parse_config``); ``schema`` holds the
models; ``durations`` parses ``250ms``/``1h`` and the weights."""
