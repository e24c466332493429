from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpsearch.candidate import SUPPORTED_BITS, Candidate, check_bits
from mpsearch.errors import CandidateError

names = st.text(alphabet="abcdefgh.0123456789_", min_size=1, max_size=12)
pairs = st.tuples(st.sampled_from(SUPPORTED_BITS), st.sampled_from(SUPPORTED_BITS))


@given(st.dictionaries(names, pairs, min_size=1, max_size=20))
def test_json_round_trip_preserves_order_and_key(bits: dict) -> None:
    cand = Candidate(bits)
    back = Candidate.from_json(cand.to_json())
    assert back == cand and list(back) == list(cand) and back.key() == cand.key()
    assert hash(back) == hash(cand)


@given(st.integers().filter(lambda b: b not in SUPPORTED_BITS))
def test_unsupported_bits_rejected(bits: int) -> None:
    with pytest.raises(CandidateError, match="unsupported weight bit-width"):
        check_bits(bits, 8)


@pytest.mark.parametrize("bad", [True, 8.0, "8", 12, 64, 1, 0])
def test_non_int_or_unlowered_bits_rejected(bad: object) -> None:
    with pytest.raises(CandidateError):
        Candidate({"a": (8, bad)})


def test_validate_names_unknown_and_missing_layers() -> None:
    cand = Candidate({"conv1": (8, 8), "typo": (4, 8)})
    with pytest.raises(CandidateError, match="unknown layer 'typo'"):
        cand.validate(["conv1", "fc"])
    with pytest.raises(CandidateError, match="no bits for layer 'fc'"):
        Candidate({"conv1": (8, 8)}).validate(["conv1", "fc"])


@pytest.mark.parametrize("text", ["{", "[1, 2]", '{"a": [8]}', '{"a": [8, 8, 8]}'])
def test_bad_json_is_a_candidate_error(text: str) -> None:
    with pytest.raises(CandidateError):
        Candidate.from_json(text)


def test_describe_counts_pairs() -> None:
    assert Candidate({"a": (8, 8), "b": (8, 8), "c": (4, 8)}).describe() == "W8A8x2 W4A8x1"
