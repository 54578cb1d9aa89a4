import json
import random
import re

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
        '{"meta": {"text": "nested"}}',  # not at the top level
        '{"text": "a", "text": 1}',  # the last of duplicate keys counts
        '{"text": "a", "n": 1' + "0" * 4300 + "}",  # Python refuses integers this long
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


# The property test: generated records, written with random escapes and
# whitespace, some broken on purpose, against json.loads of the same bytes.
_CHARS = ["a", "Z", " ", '"', "\\", "/", "\n", "\t", "\x01", "\x7f", "é", "中", "😀",
          "\ud800", "\udc00", '"text": "no"', '{"text":', "\\u0041"]
_KEYS = ["text", "text", "meta", "label", "tex", "Text", 'k"é']
_SPACE = ["", "", " ", "\t", "\r", "  "]


def _write_string(rng, text):
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append(rng.choice(["\\n", "\\u000a", "\\u000A"]))
        elif ord(char) < 0x20 or 0xD800 <= ord(char) < 0xE000 or rng.random() < 0.1:
            if ord(char) > 0xFFFF:  # as a surrogate pair
                high, low = divmod(ord(char) - 0x10000, 0x400)
                out.append(f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04X}")
            else:
                out.append(f"\\u{ord(char):04x}")
        elif char == "/" and rng.random() < 0.5:
            out.append("\\/")
        else:
            out.append(char)
    return "".join(out + ['"'])


def _write_value(rng, depth):
    space = lambda: rng.choice(_SPACE)  # noqa: E731
    roll = rng.random()
    if depth < 3 and roll < 0.2:
        members = [space() + _write_string(rng, rng.choice(_KEYS)) + space() + ":" + space()
                   + _write_value(rng, depth + 1) + space() for _ in range(rng.randrange(5))]
        return "{" + (",".join(members) or space()) + "}"
    if depth < 3 and roll < 0.3:
        items = [space() + _write_value(rng, depth + 1) + space() for _ in range(rng.randrange(4))]
        return "[" + (",".join(items) or space()) + "]"
    if roll < 0.85:
        if rng.random() < 0.2:
            return _write_string(rng, rng.choice(_KEYS))  # a value (or array item) like a key
        return _write_string(rng, "".join(rng.choice(_CHARS) for _ in range(rng.randrange(6))))
    if roll < 0.97:
        return rng.choice(["0", "-1", "12.5e-3", "1E+2", "-0.0", "true", "false", "null", "NaN",
                           "-Infinity", "Infinity"])
    return rng.choice(["01", "1.", ".5", "+1", "tru", "None", "1e", "-NaN", "0x1", "１"])


def _break(rng, line):
    """Most often a damaged line (json.loads decides whether it still parses)."""
    cut = rng.randrange(len(line) + 1)
    return rng.choice([
        line[:cut],  # truncated
        line + rng.choice(["x", "}", ",", " {}", '"']),  # trailing garbage
        line.replace('"', "'", 1),
        line.replace(",", "", 1),
        line.replace(rng.choice("{}"), rng.choice("[]"), 1),
        line[:cut] + '"text": "inserted",' + line[cut:],
        line[:cut] + rng.choice(['"', "\\", ",", ":", "{", "]", "\x02", " "]) + line[cut:],
        line[:cut] + line[cut + 1:],
    ])


def _expected(line, field):
    try:
        record = json.loads(line.encode("utf-8"))  # the bytes, as the pipeline holds them
    except ValueError:
        return None
    value = record.get(field) if isinstance(record, dict) else None
    # A lone surrogate cannot be UTF-8: it reads as U+FFFD.
    return re.sub("[\ud800-\udfff]", "\ufffd", value) if isinstance(value, str) else None


def test_agrees_with_json_loads_on_generated_lines():
    rng = random.Random(14)
    lines = []
    for _ in range(10000):
        members = [rng.choice(_SPACE) + _write_string(rng, rng.choice(_KEYS)) + rng.choice(_SPACE) + ":"
                   + rng.choice(_SPACE) + _write_value(rng, 1) for _ in range(rng.randrange(6))]
        line = rng.choice(_SPACE) + "{" + ",".join(members) + rng.choice(_SPACE) + "}" + rng.choice(_SPACE)
        if rng.random() < 0.05:
            line = _write_value(rng, 1)  # not an object
        if rng.random() < 0.02:
            line = "\ufeff" + line  # a byte-order mark: json.loads of bytes skips it
        lines.append(_break(rng, line) if rng.random() < 0.3 else line)
    for field in ["text", 'k"é']:
        values, found = extract_string_field(lines, field)
        got = [v.decode("utf-8") if f else None for v, f in zip(values.numpy(), found.numpy())]
        expected = [_expected(line, field) for line in lines]
        mismatches = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
        assert not mismatches, [(lines[i], got[i], expected[i]) for i in mismatches[:3]]
        assert np.mean([e is not None for e in expected]) > 0.05
    # Both outcomes well covered: found, and lines json.loads refuses.
    assert 0.1 < np.mean([_expected(line, "text") is not None for line in lines]) < 0.9
    assert np.mean([_parses(line) for line in lines]) < 0.8


def _parses(line):
    try:
        json.loads(line.encode("utf-8"))
        return True
    except ValueError:
        return False
