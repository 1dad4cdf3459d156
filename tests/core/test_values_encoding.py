"""The JSON text tidesync stores: ``compact_encoder`` writes exactly what ``json`` writes."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidesync.core.values import canonical_json, compact_encoder

_plain = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**63 - 1) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)

_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_json_sorted = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


@settings(max_examples=300, deadline=None)
@given(_plain)
def test_same_text_as_the_json_encoder(value):
    assert compact_encoder()(value) == _json(value)
    assert compact_encoder(sort_keys=True)(value) == _json_sorted(value)
    assert canonical_json(value) == _json_sorted(value)


@pytest.mark.parametrize("value", [Decimal(1), object(), {(1,): 2}])
def test_same_error_as_the_json_encoder(value):
    with pytest.raises(TypeError) as expected:
        _json(value)
    with pytest.raises(TypeError) as got:
        compact_encoder()(value)
    assert str(got.value) == str(expected.value)
