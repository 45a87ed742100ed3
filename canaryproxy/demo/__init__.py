"""``canaryproxy demo``: the whole product on one machine (``show``) and its live terminal
view (``view``)."""
