"""Stop strings: generated text ends where the first of them starts, which is not returned.

A stop string can span several tokens and start inside one, so it is found in the
detokenized text, after decoding (in-graph, one RE2 pass per batch), rather than by
the decoding loop; stop token ids (`control_logits`) end a row inside the loop.

Example:
>>> text, stopped = cut_at_stop_strings(tf.constant(["a cat.\\nThe end"]),
...                                     tf.constant(["\\n", "end"]))
>>> text.numpy(), stopped.numpy()             # [b"a cat."], [True]
"""

import tensorflow as tf

# RE2's special characters, each escaped with a backslash to match itself.
_SPECIAL = r"([\\.+*?()|\[\]{}^$])"


def cut_at_stop_strings(text, stop_strings):
    """Cuts each of `text` `(batch,)` at the earliest occurrence of any of `stop_strings`
    `(n,)` (empty strings are ignored; none: nothing is cut).

    Returns:
        `(text, stopped)`: the texts up to (not including) the first stop string, and
        `(batch,)` bool, whether each held one.
    """
    text = tf.convert_to_tensor(text, tf.string)
    stop_strings = tf.convert_to_tensor(stop_strings, tf.string)
    stop_strings = tf.boolean_mask(stop_strings, tf.strings.length(stop_strings) > 0)
    escaped = tf.strings.regex_replace(stop_strings, _SPECIAL, r"\\\1")
    # (?s): a stop string may be followed by newlines; the leftmost match of the alternation
    # is the earliest stop string, and everything from it on is cut.
    pattern = tf.strings.join(["(?s)(?:", tf.strings.reduce_join(escaped, separator="|"),
                               ").*"])

    def cut():
        stopped = tf.strings.regex_full_match(text, tf.strings.join(["(?s).*?", pattern]))
        return tf.strings.regex_replace(text, pattern, "", replace_global=False), stopped

    def keep():
        return text, tf.zeros_like(text, tf.bool)

    return tf.cond(tf.size(stop_strings) > 0, cut, keep)
