"""The access log's shared pieces (lines themselves are checked end to end)."""

from __future__ import annotations

import json

from canaryproxy.outcomes.accesslog import where_fields


def test_where_fields_are_json_with_null_for_what_is_unknown() -> None:
    assert json.loads("{" + where_fields(None, None, None) + "}") == {
        "service": None,
        "pool": None,
        "backend": None,
    }
    fields = where_fields('we"b', "canary", "http://127.0.0.1:9002")
    assert json.loads("{" + fields + "}") == {
        "service": 'we"b',
        "pool": "canary",
        "backend": "http://127.0.0.1:9002",
    }
