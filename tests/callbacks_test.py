"""Keras callbacks, evaluate and predict keep working under replay."""

import keras
import numpy as np
import pytest

import keras_bsgd


def small_model():
    keras.utils.set_random_seed(0)
    return keras_bsgd.Sequential(
        [keras.Input((5,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
    )


def data(n=64):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 5)).astype("float32"), rng.integers(0, 3, n)


def test_standard_callbacks_run_and_see_backward_iterates(tmp_path):
    x, y = data()
    model = small_model()
    model.compile(
        optimizer=keras_bsgd.BackwardSGD(0.05, window=3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=True,
    )
    seen_lr = []
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(tmp_path / "best.keras", save_best_only=True),
        keras.callbacks.ModelCheckpoint(tmp_path / "w.weights.h5", save_weights_only=True),
        keras.callbacks.TensorBoard(log_dir=tmp_path / "tb"),
        keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.05 * 0.5**epoch),
        keras.callbacks.ReduceLROnPlateau(monitor="loss", patience=1, factor=0.5),
        keras.callbacks.ProgbarLogger(),
        keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda e, logs: seen_lr.append(float(model.optimizer.learning_rate))
        ),
    ]
    history = model.fit(x, y, batch_size=8, epochs=3, validation_data=(x, y), callbacks=callbacks,
                        verbose=0)
    assert len(history.history["loss"]) >= 2
    np.testing.assert_allclose(seen_lr[:2], [0.05, 0.025], rtol=1e-6)
    assert (tmp_path / "best.keras").exists() and (tmp_path / "w.weights.h5").exists()
    assert any((tmp_path / "tb").iterdir())
    loaded = keras.models.load_model(tmp_path / "best.keras")
    assert isinstance(loaded.optimizer, keras_bsgd.BackwardSGD)
    # evaluate / predict run on the model's weights: the backward iterate.
    logits = model.predict(x, verbose=0)
    loss, acc = model.evaluate(x, y, verbose=0)
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)
    np.testing.assert_allclose(loss, float(expected), rtol=1e-5)
    assert 0.0 <= acc <= 1.0


@pytest.mark.tensorflow
def test_tf_data_pipeline_and_numpy_give_the_same_run():
    import tensorflow as tf

    x, y = data(48)
    finals = []
    for as_dataset in (False, True):
        model = small_model()
        model.compile(optimizer=keras_bsgd.BackwardSGD(0.05, window=4),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        if as_dataset:
            ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8, drop_remainder=True)
            model.fit(ds, verbose=0)
        else:
            model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
        finals.append(model.get_weights())
    for a, b in zip(*finals, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_swap_ema_weights_validates_on_the_average_and_leaves_the_run_alone(tmp_path):
    # Keras' SwapEMAWeights (and TensorBoard) look for an `inner_optimizer`
    # to unwrap; the EMA of the output iterates lives on BackwardSGD itself.
    x, y = data()
    model = small_model()
    model.compile(
        optimizer=keras_bsgd.BackwardSGD(0.05, window=3, use_ema=True, ema_momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=True)
    history = model.fit(x, y, batch_size=8, epochs=2, validation_data=(x, y), verbose=0,
                        callbacks=[swap, keras.callbacks.TensorBoard(log_dir=tmp_path / "tb")])
    # fit() ends with the EMA in the model, which validation also used.
    np.testing.assert_allclose(history.history["val_loss"][-1], model.evaluate(x, y, verbose=0),
                               rtol=1e-6)
    # The swaps in and out were not taken for weights set from outside.
    assert int(keras.ops.convert_to_numpy(model.replay_buffer.origin)) == 0
    assert model.replayed_step == int(keras.ops.convert_to_numpy(model.optimizer.iterations.value)) == 16
