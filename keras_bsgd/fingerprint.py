"""`fingerprint`: a 32-bit hash of tensors' bits, which a step compares to tell writes from outside."""

import keras
import numpy as np
from keras import ops

# Bytes per element, by Keras' dtype names (bfloat16 has no NumPy dtype).
_ITEMSIZE = {
    "bool": 1, "int8": 1, "uint8": 1,
    "int16": 2, "uint16": 2, "float16": 2, "bfloat16": 2,
    "int32": 4, "uint32": 4, "float32": 4,
    "int64": 8, "uint64": 8, "float64": 8,
}
_WORD = {1: "uint8", 2: "uint16", 4: "int32", 8: "int32"}


def fingerprint(tensors):
    """A hash of the bits of `tensors` that changes whenever one of their elements does.

    The tensors' elements are read as unsigned words of their own width,
    one after the other, weighted by odd position factors and summed modulo
    2**32 (in groups of less than 2**30 words, whose sums are chained by a
    factor of 31). A change of any one word always
    changes the result (an odd factor is invertible modulo 2**32); other
    changes (several elements, swaps) collide with probability about
    2**-32. Integer arithmetic wraps, so the result does not depend
    on the order in which a compiled program sums (a float checksum would).
    Tensors of other dtypes (strings) are left out.

    Args:
        tensors: A list of tensors (or variables) of any shapes.

    Returns:
        An int32 scalar tensor.

    Example:

    >>> import numpy as np
    >>> weights = [np.ones((2, 3), "float32"), np.zeros((3,), "float32")]
    >>> before = int(fingerprint(weights))
    >>> weights[1][2] = -0.0  # another bit pattern for the same value
    >>> int(fingerprint(weights)) == before
    False
    """
    total = ops.convert_to_tensor(np.int32(0))
    for chunk in _chunks([w for w in (_words(t) for t in tensors) if w is not None]):
        # One concatenation: XLA fuses it into one kernel (a sum per
        # tensor would compile one kernel each, and XLA:CPU keeps every
        # kernel it compiled; docs/performance.md, "Memory").
        words = ops.concatenate(chunk) if len(chunk) > 1 else chunk[0]
        positions = ops.arange(int(words.shape[0]), dtype="int32")
        total = total * 31 + ops.sum(words * (2 * positions + 1))
    return total


def _chunks(words, size=2**30):
    """`words` in consecutive groups of fewer than `size` elements (a larger tensor alone).

    Positions are int32, so one sum covers less than 2**31 words.
    """
    chunks, count = [], size
    for w in words:
        if count + int(w.shape[0]) >= size:
            chunks.append([])
            count = 0
        chunks[-1].append(w)
        count += int(w.shape[0])
    return chunks


def _words(tensor):
    """The bits of `tensor` as a flat int32 vector (one element per word), or None."""
    tensor = ops.convert_to_tensor(tensor)
    dtype = keras.backend.standardize_dtype(tensor.dtype)
    if dtype not in _ITEMSIZE:
        return None
    if dtype == "bool":
        words = ops.cast(tensor, "int32")
    else:
        words = ops.cast(ops.view(tensor, _WORD[_ITEMSIZE[dtype]]), "int32")
    return ops.reshape(words, (-1,))
