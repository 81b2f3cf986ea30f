import math

import pytest

from bnrepro.core.claims import (
    CHECK,
    EMPIRICAL,
    EXACT,
    INCONCLUSIVE,
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    VERDICTS,
    ClaimSpec,
    at_least,
    at_most,
    between,
    claims_table,
    interval,
    register_claims,
    rules_hash,
    t_quantile,
    verdict_counts,
    within,
)


@pytest.mark.parametrize("df,expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452)])
def test_t_quantiles_match_the_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=2e-4)


def test_interval_is_mean_plus_minus_t_times_standard_error():
    mean, low, high = interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.3027 * 1.0 / math.sqrt(3), abs=1e-3)
    assert mean - low == pytest.approx(high - mean)
    assert all(math.isnan(v) for v in interval([1.0])[1:])


@pytest.mark.parametrize("rule,low,high,expected", [
    (at_least(0.5), 0.6, 0.7, REPRODUCED),
    (at_least(0.5), 0.4, 0.6, INCONCLUSIVE),
    (at_least(0.5), 0.2, 0.4, NOT_REPRODUCED),
    (at_least(0.5, null=0.0), 0.2, 0.4, PARTLY),       # right sign, short of the size
    (at_least(0.5, null=0.0), -0.1, 0.4, NOT_REPRODUCED),  # never partly when zero is inside
    (at_least(0.5, null=0.0), -0.3, -0.1, NOT_REPRODUCED),  # opposite sign
    (at_most(1e-5), 1e-7, 1e-6, REPRODUCED),
    (at_most(1e-5), 1e-6, 1e-3, INCONCLUSIVE),
    (at_most(0.0, null=1.0), 0.2, 0.5, PARTLY),
    (at_most(0.0, null=1.0), 0.5, 1.5, NOT_REPRODUCED),
    (between(0.708, 0.853), 0.75, 0.80, REPRODUCED),
    (between(0.708, 0.853), 0.80, 0.90, INCONCLUSIVE),
    (between(0.708, 0.853), 0.86, 0.90, NOT_REPRODUCED),
    (within(1.0, 0.1), 0.95, 1.05, REPRODUCED),
    (within(1.0, 0.1), math.nan, math.nan, INCONCLUSIVE),
])
def test_rules_judge_the_interval(rule, low, high, expected):
    assert rule.verdict(low, high) == expected


def spec(kind=EMPIRICAL, rule=None, **kw):
    return ClaimSpec(kw.pop("id", "a"), kind, "x", "0.9", rule or at_least(0.5, null=0.0), "why",
                     source=kw.pop("source", "ioffe2015batch"), where="Sec. 1", **kw)


def test_empirical_claims_use_the_interval_of_their_seeds():
    wide = spec().score([0.3, 0.7, 0.9])  # mean 0.63 but the interval reaches below 0.5
    assert wide.verdict == INCONCLUSIVE and wide.n == 3 and wide.ours == pytest.approx(0.6333, abs=1e-3)
    assert spec().score([0.7, 0.71, 0.72]).verdict == REPRODUCED
    assert spec().score([0.7]).verdict == INCONCLUSIVE  # one seed: no interval


def test_exact_and_check_claims_need_every_value_to_pass():
    assert spec(EXACT).score(0.97).verdict == REPRODUCED
    assert spec(CHECK, source=None, rule=at_most(1e-6)).score([1e-8, 1e-3]).verdict == INCONCLUSIVE
    assert spec(CHECK, source=None, rule=at_most(1e-6)).score([1e-3, 2e-3]).verdict == NOT_REPRODUCED
    assert spec(EXACT).score(math.nan).verdict == NOT_REPRODUCED


def test_specs_refuse_what_the_standards_forbid():
    with pytest.raises(ValueError, match="kind"):
        spec("measured")
    with pytest.raises(ValueError, match="source"):
        spec(source=None)
    with pytest.raises(ValueError, match="n >= 3"):
        spec(n=2)
    with pytest.raises(ValueError, match="upper"):
        between(1.0, 0.0)
    with pytest.raises(ValueError, match="null"):
        at_least(0.5, null=0.6)


def test_table_counts_and_plain_words():
    claims = [spec(id="a").score([0.7, 0.71, 0.72]), spec(id="b").score([0.2, 0.21, 0.22]),
              spec(CHECK, id="c", source=None, rule=at_most(1.0)).score(0.5)]
    table = claims_table(claims)
    assert list(table.index) == ["a", "b", "c"]
    assert list(table["verdict"]) == [REPRODUCED, PARTLY, REPRODUCED]
    assert table.loc["a", "rule"] == ("reproduced if our interval lies above 0.500; "
                                      "partly if it lies above 0.000 but not above 0.500")
    assert {"kind", "n", "low", "high", "ours"} <= set(table.columns)
    counts = verdict_counts(claims, kinds=(EMPIRICAL, EXACT))
    assert counts[REPRODUCED] == 1 and counts[PARTLY] == 1 and sum(counts.values()) == 2
    assert set(counts) == set(VERDICTS)


def test_verdict_cannot_be_typed_in():
    claim = spec().score([0.5, 0.6, 0.7])
    with pytest.raises(AttributeError):
        claim.verdict = REPRODUCED  # a property computed from the numbers, not a field


def test_rules_hash_changes_with_any_rule():
    register_claims("_test_hash", [spec(id="a")])
    before = rules_hash("_test_hash")
    register_claims("_test_hash", [spec(id="a", rule=at_least(0.6, null=0.0))])
    assert rules_hash("_test_hash") != before
    register_claims("_test_hash", [spec(id="a")])
    assert rules_hash("_test_hash") == before
    with pytest.raises(ValueError, match="repeat"):
        register_claims("_test_hash", [spec(id="a"), spec(id="a")])
