"""A candidate is plain data: a frozen mapping ``layer name -> (weight bits, activation bits)``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from mpsearch.errors import CandidateError, ConfigError
from mpsearch.hashing import content_hash

FLOAT_BITS = 32
HALF_BITS = 16  # IEEE half precision (fp16), not a 16-bit integer grid
INT_MAX_BITS = 8  # 2..8 are integer grids; 16 and 32 are floating point
SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8, HALF_BITS, FLOAT_BITS)

Bits = tuple[int, int]


def check_bits(w_bits: int, a_bits: int) -> Bits:
    """Validate one (weight, activation) bit pair and return it as a tuple of ints."""
    for kind, b in (("weight", w_bits), ("activation", a_bits)):
        if isinstance(b, bool) or not isinstance(b, int) or b not in SUPPORTED_BITS:
            raise CandidateError(
                f"unsupported {kind} bit-width {b!r}; use one of {list(SUPPORTED_BITS)} "
                "(16 = fp16, 32 = fp32)"
            )
    return int(w_bits), int(a_bits)


def is_integer_bits(bits: int) -> bool:
    """Whether ``bits`` is an integer quantization grid (2..8), as opposed to fp16 (16) or fp32 (32)."""
    return bits <= INT_MAX_BITS


class Candidate(Mapping[str, Bits]):
    """Immutable per-layer bit assignment, ordered by layer, serialisable to JSON."""

    __slots__ = ("_bits",)

    def __init__(self, bits: Mapping[str, Iterable[int]]) -> None:
        items = {}
        for name, pair in bits.items():
            if not isinstance(pair, (list, tuple)):  # e.g. null or 8 in a JSON bit-config
                raise CandidateError(f"layer {name!r}: expected [w_bits, a_bits], got {pair!r}")
            pair = tuple(pair)
            if len(pair) != 2:
                raise CandidateError(f"layer {name!r}: expected [w_bits, a_bits], got {list(pair)}")
            items[str(name)] = check_bits(*pair)
        self._bits: dict[str, Bits] = items

    @classmethod
    def uniform(cls, layers: Iterable[str], w_bits: int, a_bits: int) -> Candidate:
        return cls({name: (w_bits, a_bits) for name in layers})

    def __getitem__(self, name: str) -> Bits:
        return self._bits[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._bits)

    def __len__(self) -> int:
        return len(self._bits)

    def __hash__(self) -> int:
        return hash(tuple(self._bits.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Candidate) and self._bits == other._bits

    def __repr__(self) -> str:
        return f"Candidate({self.describe()})"

    def describe(self) -> str:
        """Compact label, e.g. ``W8A8x20 W4A8x2``."""
        counts: dict[Bits, int] = {}
        for pair in self._bits.values():
            counts[pair] = counts.get(pair, 0) + 1
        return " ".join(f"W{w}A{a}x{n}" for (w, a), n in sorted(counts.items(), reverse=True))

    def validate(self, layers: Iterable[str]) -> Candidate:
        """Check the candidate names exactly the model's quantizable layers."""
        layers = list(layers)
        unknown = [n for n in self._bits if n not in layers]
        if unknown:
            raise CandidateError(
                f"unknown layer {unknown[0]!r} in candidate; the model's layers are: {', '.join(layers)}"
            )
        missing = [n for n in layers if n not in self._bits]
        if missing:
            raise CandidateError(f"candidate gives no bits for layer {missing[0]!r}; add it")
        return self

    def to_dict(self) -> dict[str, list[int]]:
        return {name: list(pair) for name, pair in self._bits.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> Candidate:
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as e:
            raise CandidateError(f"candidate is not valid JSON ({e}); expected {{layer: [w, a]}}") from None
        if not isinstance(data, dict):
            raise CandidateError("candidate JSON must be an object {layer: [w_bits, a_bits]}")
        return cls(data)

    def key(self) -> str:
        """Content hash, stable across processes."""
        return content_hash(self.to_json().encode(), length=16)


SAMPLINGS = ("mix", "layer")


def random_candidates(layers: Sequence[str], pairs: Sequence[Bits], n: int, seed: int,
                      sampling: str = "mix") -> list[Candidate]:
    """``n`` distinct random candidates spread from mostly-wide to mostly-narrow bit-widths.

    ``sampling="mix"``: each candidate first draws its own mix of the pairs from a flat Dirichlet,
    then every layer draws its pair from that mix. ``"layer"``: every layer draws uniformly (what
    Optuna's random sampler and NSGA-II's first generation do); that puts nearly every candidate at
    the same average bit-width (22 layers average out), a much narrower range to rank.
    Stops early (with fewer candidates) when the space has fewer distinct ones.
    """
    if sampling not in SAMPLINGS:
        raise ConfigError(f"sampling {sampling!r} is unknown; use one of {', '.join(SAMPLINGS)}")
    if n < 0:
        raise ConfigError(f"the number of random candidates must be >= 0, got {n}")
    if not layers or not pairs:
        raise ConfigError("need at least one layer and one bit pair to draw candidates from")
    rng = np.random.default_rng(seed)
    pairs = [tuple(p) for p in pairs]
    out: dict[Candidate, None] = {}
    for _ in range(50 * n):
        if len(out) >= n:
            break
        mix = rng.dirichlet(np.ones(len(pairs))) if sampling == "mix" else None
        picks = rng.choice(len(pairs), size=len(layers), p=mix)
        out.setdefault(Candidate({name: pairs[i] for name, i in zip(layers, picks)}), None)
    return list(out)
