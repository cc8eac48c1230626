"""The counter-based random numbers every runtime shares: uniform(seed, row, step) from a hash.

A sample's random number at a step is a pure function of (seed, row, step), so the Python engine,
generate.onnx in any ONNX Runtime (CPU, Node.js, the browser) and any other language draw the very
same numbers without sharing a generator's state. The hash uses only 32-bit unsigned multiply, xor
and right shift, which ONNX Runtime implements on CPU for uint32 (Mul, BitwiseXor, BitShift) and
which every language has (JavaScript: Math.imul and >>>). Its mixing function is MurmurHash3's
32-bit finalizer (fmix32), a bijection with full avalanche, chained over the seed's two 32-bit
halves, the row and the step:

    key(seed, row) = fmix32((seed_key + hi32(row) * ROW_HI_MUL) ^ lo32(row))     (uint32 wrapping)
    seed_key       = fmix32(fmix32(lo32(seed) ^ SEED_SALT) ^ hi32(seed))
    uniform(seed, row, step) = fmix32(key ^ step) / 2**32        (in [0, 1), 32-bit resolution)

Rows below 2**32 (every row a generate.onnx call addresses) have hi32(row) = 0, so their key is
fmix32(seed_key ^ row); the high word lets the Python engine give each prompt of a several-prompt
request its own rows (prompt i starts at row i * 2**32) without two prompts sharing a stream.
Row i depends only on (seed, i), never on the batch. lstmgen.graphs.generation builds the same
function from ONNX operators; tests hold the two equal.
"""

from __future__ import annotations

import numpy as np

SEED_SALT = 0x9E3779B9  # keeps seed 0 away from fmix32's fixed point at 0
FMIX_MUL1 = 0x85EBCA6B
FMIX_MUL2 = 0xC2B2AE35
FMIX_SHIFTS = (16, 13, 16)
ROW_HI_MUL = 0x9E3779B1  # odd (a bijection on the high word), golden-ratio bits spread it over the key
UNIFORM_SCALE = 2.0**-32


def fmix32(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer on a uint32 array (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint32)
    x = x ^ (x >> np.uint32(FMIX_SHIFTS[0]))
    x = x * np.uint32(FMIX_MUL1)
    x = x ^ (x >> np.uint32(FMIX_SHIFTS[1]))
    x = x * np.uint32(FMIX_MUL2)
    return x ^ (x >> np.uint32(FMIX_SHIFTS[2]))


def row_keys(seed: int, rows) -> np.ndarray:
    """The per-row keys (uint32) of a seed in [0, 2**63) for the given row numbers in [0, 2**64)."""
    seed_lo = np.array([seed & 0xFFFFFFFF], dtype=np.uint32)
    seed_hi = np.array([seed >> 32], dtype=np.uint32)
    seed_key = fmix32(fmix32(seed_lo ^ np.uint32(SEED_SALT)) ^ seed_hi)
    rows = np.asarray(rows, dtype=np.uint64).reshape(-1)
    row_lo = (rows & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    row_hi = (rows >> np.uint64(32)).astype(np.uint32)
    return fmix32((seed_key + row_hi * np.uint32(ROW_HI_MUL)) ^ row_lo)


def uniforms(keys: np.ndarray, step: int) -> np.ndarray:
    """One float64 uniform in [0, 1) per row key for the given step."""
    return fmix32(keys ^ np.uint32(step)).astype(np.float64) * UNIFORM_SCALE


def uniform_block(keys: np.ndarray, first_step: int, steps: int) -> np.ndarray:
    """Uniforms [rows, steps] for steps first_step .. first_step + steps - 1: uniforms() for many steps at once."""
    step_ids = np.arange(first_step, first_step + steps, dtype=np.uint64).astype(np.uint32)  # wraps like uint32
    return fmix32(keys[:, None] ^ step_ids[None, :]).astype(np.float64) * UNIFORM_SCALE
