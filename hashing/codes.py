"""Binary hash codes: from hash-layer activations to one uint64 per image, and to PostgreSQL bit(n).

Bit order (MSB first): hash unit j of an n-bit code is bit (n - 1 - j) of the uint64, i.e. the code
read as a binary number has unit 0 as its most significant bit. The PostgreSQL bit(n) text form lists
the units in order, so `int(text, 2) == code` and character j is unit j. Hamming distances do not
depend on the order; this one makes the three forms agree at a glance.
"""

from __future__ import annotations

import numpy as np

from hashing import HASH_BITS

ACTIVATION_THRESHOLD = 0.5
"""Sigmoid hash-layer activations above this are 1 bits (Barz & Denzler's binarisation)."""

_MAX_BITS = 64


def binarize(activations: np.ndarray, threshold: float = ACTIVATION_THRESHOLD) -> np.ndarray:
    """(n, bits) activations -> (n, bits) uint8 of 0/1: 1 where the activation is above `threshold`."""
    activations = np.asarray(activations)
    if activations.ndim != 2:
        raise ValueError(
            f"binarize: activations must be 2-D (images, bits), got shape {activations.shape}; "
            "reshape a single image to (1, bits)"
        )
    return (activations > threshold).astype(np.uint8)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """(n, n_bits) 0/1 -> (n,) uint64, unit j in bit n_bits-1-j (see the module docstring)."""
    bits = np.asarray(bits)
    if bits.ndim != 2 or not 0 < bits.shape[1] <= _MAX_BITS:
        raise ValueError(f"pack_bits: bits must have shape (n, 1..{_MAX_BITS}), got {bits.shape}")
    if bits.size and (bits.min() < 0 or bits.max() > 1):
        raise ValueError(f"pack_bits: bits must be 0 or 1, got values in [{bits.min()}, {bits.max()}]")
    n_bits = bits.shape[1]
    packed = np.packbits(bits.astype(np.uint8), axis=1, bitorder="big")
    words = np.zeros((len(bits), 8), dtype=np.uint8)
    words[:, 8 - packed.shape[1] :] = packed
    # packbits pads the last byte with zeros on the right; shift them out.
    return words.view(">u8").ravel().astype(np.uint64) >> np.uint64(8 * packed.shape[1] - n_bits)


def unpack_bits(codes: np.ndarray, n_bits: int = HASH_BITS) -> np.ndarray:
    """(n,) uint64 -> (n, n_bits) uint8 of 0/1; the inverse of `pack_bits`."""
    codes = _check_codes(codes, n_bits)
    n_bytes = -(-n_bits // 8)
    shifted = codes << np.uint64(8 * n_bytes - n_bits)
    words = shifted.astype(">u8").view(np.uint8).reshape(len(codes), 8)[:, 8 - n_bytes :]
    return np.unpackbits(words, axis=1, count=n_bits, bitorder="big")


def pack_activations(activations: np.ndarray, threshold: float = ACTIVATION_THRESHOLD) -> np.ndarray:
    """(n, bits) hash-layer activations -> (n,) uint64 codes."""
    return pack_bits(binarize(activations, threshold))


def to_bit_strings(codes: np.ndarray, n_bits: int = HASH_BITS) -> list[str]:
    """(n,) uint64 -> PostgreSQL bit(n_bits) literals such as '0101...'."""
    chars = unpack_bits(codes, n_bits) + np.uint8(ord("0"))
    return [s.decode("ascii") for s in np.ascontiguousarray(chars).view(f"S{n_bits}").ravel()]


def from_bit_strings(strings: list[str], n_bits: int = HASH_BITS) -> np.ndarray:
    """PostgreSQL bit(n_bits) text ('0101...') -> (n,) uint64; the inverse of `to_bit_strings`."""
    for i, s in enumerate(strings):
        if len(s) != n_bits or s.strip("01"):
            raise ValueError(f"from_bit_strings: string {i} ({s!r}) must be {n_bits} characters of 0 and 1")
    if not strings:
        return np.zeros(0, dtype=np.uint64)
    chars = np.frombuffer("".join(strings).encode("ascii"), dtype=np.uint8)
    return pack_bits((chars - np.uint8(ord("0"))).reshape(len(strings), n_bits))


def _check_codes(codes: np.ndarray, n_bits: int) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 1 or codes.dtype != np.uint64:
        raise ValueError(f"codes must be a 1-D uint64 array, got {codes.dtype} of shape {codes.shape}")
    if not 0 < n_bits <= _MAX_BITS:
        raise ValueError(f"n_bits must be 1..{_MAX_BITS}, got {n_bits}")
    if n_bits < _MAX_BITS and codes.size and (codes >> np.uint64(n_bits)).any():
        bad = int(np.flatnonzero(codes >> np.uint64(n_bits))[0])
        raise ValueError(f"code {bad} ({int(codes[bad]):#x}) has bits above bit {n_bits - 1}")
    return codes
