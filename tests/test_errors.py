"""`assertion_message` reads a failed in-graph check's message back exactly: from a
TensorFlow error raised in a function or a tf.data pipeline, and from TF Serving's text."""

import pytest
import tensorflow as tf

from tflm.errors import assertion_message

MESSAGES = ["top_p: 1.5; must be in (0, 1]",
            "tflm-bad-record: a.jsonl:3: missing 'text', \"q\" 中文 ü [x] a\\b\nnext"]


def _check(x, message):
    tf.debugging.assert_equal(x, True, message=message)
    return x


@pytest.mark.parametrize("message", MESSAGES)
def test_the_message_comes_back_as_written(message):
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        tf.function(_check)(tf.constant(False), message)
    assert assertion_message(raised.value.message) == message
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        tf.data.Dataset.from_tensors(False).map(lambda x: _check(x, message)).get_single_element()
    assert assertion_message(raised.value.message) == message

    @tf.function
    def asserted(x):
        tf.debugging.Assert(x, [tf.strings.format("{}: " + message.replace("{", "("), [7])])
        return x

    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        asserted(tf.constant(False))
    assert assertion_message(raised.value.message) == "7: " + message.replace("{", "(")


def test_serving_text_and_other_errors():
    # TF Serving's details: the C-escaped message, then the node.
    details = "assertion failed: [model\\'s top_k: -1; must be >= 0]\n\t [[{{node Assert}}]]"
    assert assertion_message(details) == "model's top_k: -1; must be >= 0"
    assert assertion_message("Servable not found for request") is None
    assert assertion_message(None) is None
