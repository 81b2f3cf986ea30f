"""How the book shows claims: every row, plain-word rules, sources linked to the References page;
the scorecard's forest plot and counts; the bibliography's keys."""

import math
import re

import pandas as pd
import pytest
import yaml

from bnrepro import scorecard
from bnrepro.core.claims import ClaimSpec, at_least, at_most, within
from bnrepro.core.display import anchor_id, claims_rows_html, reference_link, show_claims, show_table, source_label
from conftest import REPO

#: The bibliography's keys, agreed with the chapters (claims' sources) before they were written.
BIB_KEYS = {
    "ioffe2015batch", "d2l_zh", "d2l_en", "santurkar2018how", "kohler2019exponential", "de2020batch",
    "frankle2021training", "open_lth", "bnonly_tf_port", "pytorch_batchnorm", "keras_batchnorm",
    "lecun1998gradient", "xiao2017fashion", "ba2016layer", "wu2018group", "ulyanov2016instance",
    "glorot2010understanding", "he2016deep", "simonyan2015very", "zhang2019fixup", "seed_bn_lecture",
    "seed_bn_googlenet", "seed_feature_scaling", "seed_bnonly_blog", "seed_skipinit_article",
}


def bib_entries() -> dict[str, str]:
    text = (REPO / "book" / "references.bib").read_text()
    parts = re.split(r"\n(?=@)", text)
    return {m.group(1): p for p in parts if (m := re.match(r"@\w+\s*\{\s*([^,\s]+)\s*,", p))}


def test_the_bibliography_has_exactly_the_agreed_keys_each_complete():
    entries = bib_entries()
    assert set(entries) == BIB_KEYS
    for key, entry in entries.items():
        assert re.search(r"^\s*title\s*=", entry, re.M), key
        if not key.startswith("seed_"):
            assert re.search(r"^\s*(url|doi)\s*=", entry, re.M), f"{key}: no url or doi"
            assert re.search(r"^\s*author\s*=", entry, re.M), f"{key}: no author"
    for key in ("d2l_zh", "d2l_en"):
        assert "Section" in entries[key] and "edition" in entries[key], key


def test_the_book_builds_the_bibliography_with_ids_the_tables_link_to():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert config["bibtex_bibfiles"] == ["book/references.bib"]
    assert config["sphinx"]["config"]["bibtex_cite_id"] == "cite-{key}"
    assert ":all:" in (REPO / "book" / "references.md").read_text()
    assert reference_link("seed_bn_lecture") == "references.html#cite-seed-bn-lecture"
    assert anchor_id("cite-d2l_zh") == "cite-d2l-zh"


def _claims(n=3):
    spec = ClaimSpec("bn-x-faster", "empirical", "BN trains faster", "14x", at_least(2.0, null=1.0),
                     "half the paper's speed-up", source="ioffe2015batch", where="Table 2", unverified=True)
    check = ClaimSpec("same-as-pytorch", "check", "our BN equals PyTorch's", "equal", at_most(1e-6), "float noise")
    return [spec.score([2.5, 3.0, 2.8][:n], "cpu profile, 3 seeds"), check.score([1e-9])]


def test_a_claims_table_shows_every_row_with_its_rule_in_words_and_a_linked_source():
    claims = _claims() * 40  # 80 rows: no elision, however long
    html = show_claims(claims).html
    assert html.count('<tr id="claim-') == 80
    assert "..." not in html and "rows ×" not in html
    assert 'href="references.html#cite-ioffe2015batch">Ioffe &amp; Szegedy 2015</a>, Table 2' in html
    assert "Reproduced if our interval lies above 2.000; partly if it lies above 1.000" in html
    assert 'class="col-verdict verdict reproduced"' in html and "(unverified)" in html
    assert "our code" in html and "nan" not in html.lower().replace("nano", "")
    assert repr(show_claims(claims)) == "claims table, 80 rows (HTML)"


def test_a_claim_with_too_few_values_shows_dashes_not_nan():
    html = show_claims(_claims(n=1)[:1]).html
    assert "inconclusive" in html and "n/a" not in html and "–" in html


def test_source_labels_come_from_the_bibliography():
    assert source_label("frankle2021training") == "Frankle et al. 2021"
    assert source_label("de2020batch") == "De & Smith 2020"
    assert source_label("d2l_zh") != source_label("d2l_en")
    assert source_label("seed_bnonly_blog").startswith("Training only BatchNorm")
    assert source_label("not-a-key") == "not-a-key"


def test_small_tables_show_every_row_and_no_nan():
    frame = pd.DataFrame({"a": range(70), "b": [math.nan] + [1.5] * 69})
    html = show_table(frame).html
    assert html.count("<tr>") == 71 and "nan" not in html.lower() and "–" in html


def _table():
    rows = []
    for chapter, doc in (("One", "book/one"), ("Two", "book/two")):
        for c in _claims():
            row = c.row()
            row["claim"] = f"{doc}-{row['claim']}"
            rows.append({"chapter": chapter, "doc": doc, **row})
    extra = ClaimSpec("band", "empirical", "near 0.9", "0.9", within(0.9, 0.02), "spread", source="d2l_zh")
    rows.append({"chapter": "Two", "doc": "book/two", **extra.score([0.9, 0.901, 0.899]).row()})
    return pd.DataFrame(rows, columns=scorecard.COLUMNS)


def test_counts_cover_the_papers_claims_and_checks_apart():
    table = _table()
    assert scorecard.counts(table) == {"reproduced": 3, "partly": 0, "inconclusive": 0, "not reproduced": 0}
    by_kind = scorecard.counts_by_kind(table)
    assert by_kind.loc["check", "reproduced"] == 2 and by_kind.loc["empirical", "total"] == 3


def test_the_forest_plot_groups_by_chapter_and_rescales_each_row():
    import matplotlib

    matplotlib.use("Agg")
    table = _table()
    fig = scorecard.forest(table)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["book/one-bn-x-faster", "book/two-bn-x-faster", "band"]  # empirical rows only
    texts = [t.get_text().strip() for t in fig.axes[0].texts]
    assert texts == ["One", "Two"]
    row = table.iloc[0]
    zero, unit, _ = scorecard.row_scale(row)
    assert (1.0 - zero) / unit == 0 and (2.0 - zero) / unit == 1  # null at 0, threshold at 1
    band = table.iloc[-1]
    zero, unit, kind = scorecard.row_scale(band)
    assert kind == "band" and math.isclose((0.9 - zero) / unit, 1.0) and math.isclose((0.88 - zero) / unit, 0.5)
    html = claims_rows_html(table.to_dict("records"), group="chapter", links={"One": "one.html"}).html
    assert html.count('class="group"') == 2 and '<a href="one.html">One</a>' in html
    import matplotlib.pyplot as plt

    plt.close("all")


def test_collect_can_name_a_chapter_that_fails_instead_of_raising(monkeypatch):
    def broken(profile, device=None):
        raise TypeError("not migrated")

    def fine(profile, device=None):
        print("found stored result, loading: abc")
        return _claims()

    fake = [scorecard.Chapter("book/a", "A", "a", fine), scorecard.Chapter("book/b", "B", "b", broken)]
    monkeypatch.setattr(scorecard, "chapters", lambda: fake)
    with pytest.raises(TypeError):
        scorecard.collect("smoke")
    table = scorecard.collect("smoke", quiet=True, errors="report")
    assert list(table["chapter"]) == ["A", "A"] and table.attrs["failed"] == {"B": "TypeError: not migrated"}


def test_the_old_scheme_is_stored_once():
    old = scorecard.old_scheme()
    assert len(old) == 79 and int((old["verdict"] == "reproduced").sum()) == 55
    assert old["claim"].is_unique
