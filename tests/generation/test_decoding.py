import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.data import ByteTokenizer
from tflm.generation import CausalDecoder, generate, next_token
from tflm.models import CausalLM, TransformerBackbone

END = 5


def _model(**overrides):
    kwargs = dict(vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=16,
                  intermediate_dim=32, max_sequence_length=64, causal=True, norm_first=True,
                  dropout=0.0, attention_dropout=0.0)
    kwargs.update(overrides)
    keras.utils.set_random_seed(0)
    model = CausalLM(TransformerBackbone(**kwargs))
    # Sharpen the random model so greedy paths are clear-cut (no near ties).
    embeddings = model.backbone.token_embedding.embeddings
    embeddings.assign(embeddings * 20.0)
    return model


def _uncached_greedy(model, prompt, steps):
    """Full forward pass over the whole sequence for every new token."""
    sequence = list(prompt)
    new = []
    for _ in range(steps):
        ids = tf.constant([sequence])
        logits = model({"token_ids": ids, "padding_mask": tf.ones_like(ids)})[0, -1]
        token = int(tf.argmax(logits))
        new.append(token)
        if token == END:
            break
        sequence.append(token)
    return new


PROMPTS = [[7, 8, 9], [10], [11, 12, 13, 14, 15, 16]]


@pytest.mark.parametrize("variant", [
    {}, {"position_encoding": "rotary", "tie_embeddings": False, "normalization": "rms_norm",
         "activation": "swiglu"},
    # Llama / Mistral: 4 query heads share 2 key/value heads; a window of 4 keys.
    {"position_encoding": "rotary", "tie_embeddings": False, "normalization": "rms_norm",
     "activation": "swiglu", "use_bias": False, "num_heads": 4, "num_key_value_heads": 2,
     "sliding_window": 4}])
def test_cached_greedy_equals_uncached_greedy(variant):
    model = _model(**variant)
    decoder = CausalDecoder(model, end_id=END)
    tokens, lengths = decoder.sample(tf.ragged.constant(PROMPTS), 10)
    for row, prompt in enumerate(PROMPTS):
        expected = _uncached_greedy(model, prompt, 10)
        assert tokens.numpy()[row, : lengths.numpy()[row]].tolist() == expected


def test_a_prompt_decodes_the_same_alone_or_in_a_batch():
    decoder = CausalDecoder(_model(), end_id=END)
    batch, _ = decoder.sample(tf.ragged.constant(PROMPTS), 8, temperature=0.9, seed=4)
    for row, prompt in enumerate(PROMPTS):
        alone, _ = decoder.sample(tf.ragged.constant([prompt]), 8, temperature=0.9, seed=4)
        np.testing.assert_array_equal(alone.numpy()[0], batch.numpy()[row])


def test_beam_of_one_is_greedy():
    decoder = CausalDecoder(_model(), end_id=END)
    prompts = tf.ragged.constant(PROMPTS)
    greedy, greedy_lengths = decoder.sample(prompts, 9)
    beam, beam_lengths = decoder.beam_search(prompts, 9, num_beams=1)
    np.testing.assert_array_equal(beam.numpy(), greedy.numpy())
    np.testing.assert_array_equal(beam_lengths.numpy(), greedy_lengths.numpy())


def test_higher_length_penalty_gives_longer_outputs():
    model = _model()
    prompts = tf.ragged.constant([[i, i + 1] for i in range(6, 40, 2)])
    # Point the end-of-text embedding along the average hidden state: ending
    # becomes likely, but not certain, after any prefix.
    ids = prompts.to_tensor()
    hidden = model.backbone({"token_ids": ids, "padding_mask": tf.ones_like(ids)})
    hidden = hidden["sequence_output"].numpy().reshape(-1, 16)
    embeddings = model.backbone.token_embedding.embeddings
    table = embeddings.numpy()
    direction = hidden.mean(0) / np.linalg.norm(hidden.mean(0))
    table[END] = direction * np.abs(hidden @ table.T).max() / np.abs(hidden @ direction).mean()
    embeddings.assign(table)
    decoder = CausalDecoder(model, end_id=END)
    lengths = {}
    for penalty in (0.0, 3.0):
        _, lengths[penalty] = decoder.beam_search(prompts, 8, num_beams=4, length_penalty=penalty)
    short, long = lengths[0.0].numpy(), lengths[3.0].numpy()
    assert long.mean() > short.mean() + 1.0, (short, long)


def test_sampling_is_reproducible_with_a_seed():
    decoder = CausalDecoder(_model(), end_id=END)
    prompts = tf.ragged.constant(PROMPTS)
    a, _ = decoder.sample(prompts, 12, temperature=1.5, top_k=20, top_p=0.95, seed=7)
    b, _ = decoder.sample(prompts, 12, temperature=1.5, top_k=20, top_p=0.95, seed=7)
    c, _ = decoder.sample(prompts, 12, temperature=1.5, top_k=20, top_p=0.95, seed=8)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(a.numpy(), c.numpy())


def test_top_k_one_and_tiny_top_p_are_greedy():
    decoder = CausalDecoder(_model(), end_id=END)
    prompts = tf.ragged.constant(PROMPTS)
    greedy, _ = decoder.sample(prompts, 8)
    for kwargs in ({"top_k": 1}, {"top_p": 1e-6}):
        sampled, _ = decoder.sample(prompts, 8, temperature=2.0, seed=3, **kwargs)
        np.testing.assert_array_equal(sampled.numpy(), greedy.numpy())


def test_next_token_distribution():
    logits = tf.constant([[2.0, 1.0, 0.5, 0.0, -1.0]])
    draws = np.array([int(next_token(logits, step, temperature=1.0, seed=11)[0])
                      for step in range(4000)])
    expected = tf.nn.softmax(logits)[0].numpy()
    observed = np.bincount(draws, minlength=5) / len(draws)
    # Each frequency is a binomial proportion: 4.5 standard deviations, sqrt(p(1-p)/n), is a
    # bound a correct sampler exceeds with probability below 1e-5 per token (the draws are
    # deterministic for the seed; the bound says how far a right answer may be).
    np.testing.assert_array_less(np.abs(observed - expected),
                                 4.5 * np.sqrt(expected * (1 - expected) / len(draws)))
    top2 = {int(next_token(logits, s, temperature=1.0, top_k=2, seed=1)[0]) for s in range(300)}
    assert top2 == {0, 1}
    # Nucleus 0.8: softmax is [.57, .21, .13, ...]: the first two carry 0.78 < 0.8, so three.
    nucleus = {int(next_token(logits, s, temperature=1.0, top_p=0.8, seed=1)[0])
               for s in range(600)}
    assert nucleus == {0, 1, 2}


def test_generate_with_a_tokenizer_traces_once_and_xla_agrees():
    tokenizer = ByteTokenizer()
    model = _model(vocabulary_size=262)
    texts = ["It is a truth", "", "Mr. Darcy"]
    plain = generate(model, texts, max_new_tokens=6, tokenizer=tokenizer, jit_compile=False)
    compiled = generate(model, texts, max_new_tokens=6, tokenizer=tokenizer, jit_compile=True)
    assert plain == compiled and len(plain) == 3 and all(isinstance(t, str) for t in plain)
    generate(model, ["other prompts", "of other length"], max_new_tokens=9, tokenizer=tokenizer,
                   jit_compile=False)
    key = ("CausalDecoder", None, tokenizer.end_of_text_id, 0, 1, False)
    function = model._generate_functions[key]
    assert function.experimental_get_tracing_count() == 1
    beams = generate(model, texts, max_new_tokens=6, tokenizer=tokenizer, num_beams=1)
    assert beams == plain


def test_new_tokens_stop_at_the_models_positions():
    """Prompt + new tokens fill at most the 64 positions; a larger request is the same."""
    model = _model()
    prompts = [[7, 8, 9], [6 + i % 50 for i in range(60)]]  # room for 61 and 4 new tokens
    capped = generate(model, prompts, max_new_tokens=10**9, end_id=END, jit_compile=False)
    exact = generate(model, prompts, max_new_tokens=61, end_id=END, jit_compile=False)
    assert capped == exact
    assert len(capped[0]) <= 61 and len(capped[1]) <= 4
    beams = generate(model, prompts, max_new_tokens=10**9, end_id=END, num_beams=2,
                     jit_compile=False)
    assert len(beams[0]) <= 61 and len(beams[1]) <= 4


def test_the_decode_loop_copies_no_weight_per_step():
    # Without XLA a transposed weight in the loop is a copy of it every step: for the tied
    # output table, the largest weight, about half of a small model's step.
    decoder = CausalDecoder(_model(), end_id=END)
    graph = tf.function(lambda prompts: decoder.sample(prompts, 4)).get_concrete_function(
        tf.RaggedTensorSpec([None, None], tf.int32)).graph.as_graph_def()
    bodies = [f for f in graph.library.function if "while_body" in f.signature.name]
    assert bodies
    for body in bodies:
        reads = {node.name for node in body.node_def if node.op == "ReadVariableOp"}
        assert not [node.name for node in body.node_def
                    if node.op == "Transpose" and node.input[0].split(":")[0] in reads]
