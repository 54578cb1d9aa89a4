import json

import numpy as np
import pytest

from tflm.data.jsonl import extract_string_field

TRICKY = [
    "plain",
    'quote " and backslash \\ and slash /',
    "newline \n tab \t return \r backspace \b formfeed \f",
    "中文 and emoji 😀 (a surrogate pair when escaped)",
    "\\u0041 is text, not an escape, once decoded",
    "",
    "ends with backslash \\",
]


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_decodes_like_json(ensure_ascii):
    lines = [json.dumps({"id": i, "text": t}, ensure_ascii=ensure_ascii) for i, t in enumerate(TRICKY)]
    values, found = extract_string_field(lines, "text")
    assert found.numpy().all()
    assert [v.decode("utf-8") for v in values.numpy()] == TRICKY


def test_not_found_cases():
    lines = [
        '{"label": "pos"}',  # no field
        '{"text": 5}',  # not a string
        '{"text": null}',
        "not json at all",
        '{"title": "\\"text\\": \\"fake\\""}',  # the key only inside another string
    ]
    values, found = extract_string_field(lines, "text")
    assert not found.numpy().any()
    assert all(v == b"" for v in values.numpy())


def test_key_after_a_string_mentioning_it():
    values, found = extract_string_field(['{"title": "\\"text\\": \\"no\\"", "text": "yes"}'], "text")
    assert found.numpy()[0] and values.numpy()[0] == b"yes"


def test_lone_surrogate_becomes_replacement_character():
    values, _ = extract_string_field(['{"text": "a\\ud800b"}'], "text")
    assert values.numpy()[0].decode("utf-8") == "a\ufffdb"


@pytest.mark.parametrize("name, field", [("zh_review_sentiment.jsonl", "text"),
                                          ("en_tweet_sentiment.jsonl", "text"),
                                          ("en_tweet_sentiment.jsonl", "label")])
def test_agrees_with_json_on_real_files(shared_data, name, field):
    with open(shared_data / name, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()[:5000]
    values, found = extract_string_field(lines, field)
    assert found.numpy().all()
    expected = [json.loads(line)[field] for line in lines]
    decoded = [v.decode("utf-8") for v in values.numpy()]
    mismatches = [i for i, (a, b) in enumerate(zip(decoded, expected)) if a != b]
    assert not mismatches, (mismatches[:3], [lines[i] for i in mismatches[:1]])
    assert np.mean([len(v) for v in decoded]) > 5
