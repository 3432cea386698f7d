"""Reading a classification template's answer as a moderation verdict."""

from __future__ import annotations

import pytest

from processors.classifier import UnreadableVerdict, parse_verdict
from schemas import ErrorCode


def test_json_verdicts() -> None:
    assert parse_verdict('{"flagged": true, "categories": ["violence"]}') == (
        True,
        {"violence": True},
        {},
    )
    answer = 'Sure! {"flagged": false, "categories": {"hate": false}, "scores": {"hate": 0.1}}.'
    assert parse_verdict(answer) == (False, {"hate": False}, {"hate": 0.1})


def test_word_verdicts() -> None:
    assert parse_verdict("Flagged: violence") == (True, {}, {})
    assert parse_verdict("  safe.") == (False, {}, {})
    assert parse_verdict('{"verdict": 1} no') == (False, {}, {})  # JSON without "flagged"


@pytest.mark.parametrize("answer", ["", "The river runs quiet.", '{"flagged": "maybe"}'])
def test_anything_else_is_not_a_verdict(answer: str) -> None:
    with pytest.raises(UnreadableVerdict) as caught:
        parse_verdict(answer)
    assert caught.value.code is ErrorCode.MODEL_ERROR
