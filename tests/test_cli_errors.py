"""The command line: standard JSON output, exit code 2 with a one-line message for user errors."""

from __future__ import annotations

import json

import pytest

from gridedge_env.cli import _emit, json_text


def _strict(text: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_json_output_is_standard_json(capsys):
    result = {"worst_violation_pu": float("inf"), "cost": float("nan"), "rows": [1.0, float("-inf")], "ok": 0.5}
    _emit(result, as_json=True)
    out = capsys.readouterr().out
    assert _strict(out) == {"worst_violation_pu": None, "cost": None, "rows": [1.0, None], "ok": 0.5}
    assert _strict(json_text({"nested": {"x": float("nan")}})) == {"nested": {"x": None}}


def test_strict_parser_refuses_what_json_dumps_writes_by_default():
    with pytest.raises(ValueError, match="non-standard"):
        _strict(json.dumps({"x": float("inf")}))
