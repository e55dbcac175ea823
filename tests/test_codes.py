"""hashing.codes: binarisation, packing to uint64 (bit order) and the PostgreSQL bit(n) text form."""

from __future__ import annotations

import numpy as np
import pytest

from hashing.codes import (
    binarize,
    from_bit_strings,
    pack_activations,
    pack_bits,
    to_bit_strings,
    unpack_bits,
)


def test_binarize_at_one_half():
    act = np.array([[0.0, 0.5, 0.5000001, 1.0]])
    np.testing.assert_array_equal(binarize(act), [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match=r"2-D \(images, bits\)"):
        binarize(np.zeros(48))


def test_bit_order_is_unit_zero_most_significant():
    bits = np.eye(48, dtype=np.uint8)
    codes = pack_bits(bits)
    assert codes.dtype == np.uint64 and codes.shape == (48,)
    assert [int(c) for c in codes] == [1 << (47 - j) for j in range(48)]
    assert to_bit_strings(codes[:1]) == ["1" + "0" * 47]
    assert to_bit_strings(codes[-1:]) == ["0" * 47 + "1"]


@pytest.mark.parametrize("n_bits", [48, 13, 64, 1])
def test_round_trips(n_bits):
    rng = np.random.default_rng(n_bits)
    bits = rng.integers(0, 2, (257, n_bits)).astype(np.uint8)
    codes = pack_bits(bits)
    np.testing.assert_array_equal(unpack_bits(codes, n_bits), bits)
    strings = to_bit_strings(codes, n_bits)
    assert all(len(s) == n_bits for s in strings)
    assert [int(s, 2) for s in strings] == [int(c) for c in codes]
    assert strings == ["".join(map(str, row)) for row in bits]
    np.testing.assert_array_equal(from_bit_strings(strings, n_bits), codes)


def test_pack_activations_matches_the_hamming_distance_of_the_bits():
    rng = np.random.default_rng(0)
    act = rng.random((2, 48))
    a, b = pack_activations(act)
    assert int(a ^ b).bit_count() == int(((act[0] > 0.5) != (act[1] > 0.5)).sum())


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="must be 0 or 1"):
        pack_bits(np.full((1, 48), 2))
    with pytest.raises(ValueError, match=r"shape \(n, 1..64\)"):
        pack_bits(np.zeros((1, 65)))
    with pytest.raises(ValueError, match="code 1 .* has bits above bit 47"):
        unpack_bits(np.array([0, 1 << 48], dtype=np.uint64))
    with pytest.raises(ValueError, match="1-D uint64"):
        unpack_bits(np.array([1, 2]))
    with pytest.raises(ValueError, match=r"string 1 \('0102'\) must be 4 characters of 0 and 1"):
        from_bit_strings(["0101", "0102"], 4)
    with pytest.raises(ValueError, match="must be 4 characters"):
        from_bit_strings(["010"], 4)
    assert from_bit_strings([]).shape == (0,)
