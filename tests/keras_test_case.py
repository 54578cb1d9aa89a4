"""`run_layer_test`: the checks every tflm layer passes (after keras-hub's test_case).

For a layer class, its constructor arguments and its input data (an array, or
a dict of arrays passed by name, `layer(**input_data)`):
1. config round trip: `from_config(get_config())` gives an equal config, also
   through `keras.saving.serialize_keras_object` / `deserialize_keras_object`;
2. eager call on real data, and a symbolic call on `keras.Input`, with the
   expected output shape;
3. one `fit` step with `jit_compile=True`, gradients flowing into the layer's
   weights (and the weights change);
4. under `mixed_float16` and `mixed_bfloat16`: the layer and all its
   sublayers compute in the half type, every variable is float32, and the
   output has the half type (or float32 where the layer says so).
"""

import keras
import numpy as np


def _call(layer, inputs, call_kwargs):
    # A dict of inputs is passed by name, e.g. a decoder's inputs and encoder outputs.
    if isinstance(inputs, dict):
        return layer(**inputs, **(call_kwargs or {}))
    return layer(inputs, **(call_kwargs or {}))


def _symbolic_inputs(input_data, input_dtype):
    if isinstance(input_data, dict):
        return {name: keras.Input(batch_shape=value.shape, dtype=value.dtype.name, name=name)
                for name, value in input_data.items()}
    return keras.Input(batch_shape=input_data.shape, dtype=input_dtype)


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    call_kwargs=None,
    expected_num_trainable_weights=None,
    float32_output=False,
    input_dtype="float32",
):
    # 1. Config round trip.
    layer = layer_cls(**init_kwargs)
    eager_output = _call(layer, input_data, call_kwargs)
    config = layer.get_config()
    restored = layer_cls.from_config(config)
    assert restored.get_config() == config
    serialized = keras.saving.serialize_keras_object(layer)
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is layer_cls
    assert restored.get_config() == config

    # 2. Eager and symbolic calls.
    assert tuple(eager_output.shape) == tuple(expected_output_shape)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(eager_output)))
    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights
    symbolic_output = _call(layer_cls(**init_kwargs), _symbolic_inputs(input_data, input_dtype),
                            call_kwargs)
    assert tuple(symbolic_output.shape) == tuple(expected_output_shape)

    # 3. One jit-compiled fit step; a Dense on top gives every layer a gradient.
    fit_layer = layer_cls(**init_kwargs)
    inputs = _symbolic_inputs(input_data, input_dtype)
    outputs = keras.layers.Dense(1)(keras.ops.cast(_call(fit_layer, inputs, call_kwargs), "float32"))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
    before = [np.array(w) for w in fit_layer.trainable_weights]
    target = np.random.default_rng(0).standard_normal(tuple(outputs.shape)).astype("float32")
    batch_size = len(next(iter(input_data.values())) if isinstance(input_data, dict) else input_data)
    history = model.fit(input_data, target, batch_size=batch_size, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for old, new in zip(before, fit_layer.trainable_weights):
        assert not np.array_equal(old, np.array(new)), f"{new.path} did not train"

    # 4. Mixed precision.
    for policy_name in ("mixed_float16", "mixed_bfloat16"):
        policy = keras.DTypePolicy(policy_name)
        mixed = layer_cls(**{**init_kwargs, "dtype": policy})
        output = _call(mixed, input_data, call_kwargs)
        expected = "float32" if float32_output else policy.compute_dtype
        assert keras.backend.standardize_dtype(output.dtype) == expected, policy_name
        for sublayer in mixed._flatten_layers(include_self=True):
            assert sublayer.compute_dtype == policy.compute_dtype, (policy_name, sublayer.name)
        for weight in mixed.weights:
            assert keras.backend.standardize_dtype(weight.dtype) == "float32", weight.path
    return layer


def fit_and_measure(model, dataset, steps, held_out_skip):
    """Held-out loss before and after `steps` of `model.fit` on `dataset`.

    The held-out batch is the one `held_out_skip` batches into the dataset,
    far past the batches the fit sees.
    """
    features, labels, weights = next(iter(dataset.skip(held_out_skip)))

    def loss():
        return model.evaluate(features, labels, sample_weight=weights, verbose=0,
                              return_dict=True)["loss"]

    before = loss()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return before, loss()


def assert_chunked_fit_equals_whole(build, chunk, x, y, sample_weight, jit_compile):
    """Two steps of `fit` from the same seed of `build(0)` (whole logits) and `build(chunk)`
    (the loss in chunks of `chunk` positions): the same losses, accuracies and trainable
    weights. Returns the chunked model."""
    results = []
    for size in (0, chunk):
        keras.utils.set_random_seed(0)
        model = build(size)
        model.compile(jit_compile=jit_compile)
        history = model.fit(x, y, sample_weight=sample_weight, epochs=2, verbose=0,
                            shuffle=False)
        results.append((history.history, [np.asarray(w) for w in model.trainable_weights]))
    (whole, whole_weights), (chunked, chunked_weights) = results
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-5, err_msg=key)
    for a, b in zip(chunked_weights, whole_weights):
        np.testing.assert_allclose(a, b, atol=1e-6)
    return model
