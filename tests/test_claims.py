import math

import pytest

from bnrepro.core.claims import (
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    Claim,
    at_least,
    at_most,
    between,
    claims_table,
    verdict_counts,
    within,
)


@pytest.mark.parametrize("rule,ours,expected", [
    (within(0.90, 0.02, 0.05), 0.91, REPRODUCED),
    (within(0.90, 0.02, 0.05), 0.86, PARTLY),
    (within(0.90, 0.02, 0.05), 0.80, NOT_REPRODUCED),
    (at_least(0.5, 0.1), 0.7, REPRODUCED),
    (at_least(0.5, 0.1), 0.45, PARTLY),
    (at_least(0.5, 0.1), 0.3, NOT_REPRODUCED),
    (at_most(1e-5), 1e-7, REPRODUCED),
    (at_most(1e-5), 1e-3, NOT_REPRODUCED),
    (between(0.708, 0.853, 0.03), 0.80, REPRODUCED),
    (between(0.708, 0.853, 0.03), 0.87, PARTLY),
    (between(0.708, 0.853, 0.03), 0.90, NOT_REPRODUCED),
    (within(1.0, 0.1), math.nan, NOT_REPRODUCED),
    (within(1.0, 0.1), None, NOT_REPRODUCED),
])
def test_rules(rule, ours, expected):
    assert rule.verdict(ours) == expected


def test_claim_table_and_counts():
    claims = [Claim("a", "paper, Fig. 1", "x", "0.9", 0.91, within(0.9, 0.02), "cpu"),
              Claim("b", "paper, Tab. 2", "y", ">= 0.5", 0.1, at_least(0.5), "cpu")]
    table = claims_table(claims)
    assert list(table.index) == ["a", "b"]
    assert list(table["verdict"]) == [REPRODUCED, NOT_REPRODUCED]
    assert table.loc["a", "rule"] == "|ours - 0.9| <= 0.02"
    assert verdict_counts(claims) == {REPRODUCED: 1, PARTLY: 0, NOT_REPRODUCED: 1}


def test_verdict_cannot_be_typed_in():
    claim = Claim("a", "s", "x", "0.9", 0.5, within(0.9, 0.01))
    with pytest.raises(AttributeError):
        claim.verdict = REPRODUCED  # a property computed from the numbers, not a field


def test_bad_rules():
    with pytest.raises(ValueError, match="upper"):
        between(1.0, 0.0)
