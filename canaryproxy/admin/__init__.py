"""The operators' HTTP API: routes and validation (``api``), its OpenAPI document
(``openapi``), and the ``controller`` that maps calls onto the services."""
