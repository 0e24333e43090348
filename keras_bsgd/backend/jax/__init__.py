"""The JAX backend: Keras' stateless, jitted `train_step` replaying the maps in a `lax` loop."""
