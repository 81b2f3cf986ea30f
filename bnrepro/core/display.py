"""How the book shows claims and small tables: full HTML tables, every row, wrapped text.

pandas elides long tables ("...", "79 rows × 7 columns") and cuts long cells;
the tables here render every row and let the text wrap, so the verdict stays
visible at the article's width (the book's CSS, ``_styles/bnrepro.css``,
styles the classes ``bnrepro-claims`` and ``bnrepro-table``). A claim's source
links to its entry on the References page (``references.html#cite-<key>``,
the ids set by ``bibtex_cite_id`` in ``_config.yml``).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from .claims import Claim

#: The columns of a claims table, in reading order, with their headings. The claim cell also
#: holds the rule in plain words, its reason and where our number was measured.
SHOWN = (("statement", "claim"), ("paper", "paper"), ("ours", "ours"), ("low", "low"), ("high", "high"),
         ("n", "n"), ("kind", "kind"), ("verdict", "verdict"), ("cite", "source"))
#: The page that lists the bibliography (``book/references.md``), relative to the chapters' pages.
REFERENCES_PAGE = "references.html"
BIBFILE = Path(__file__).resolve().parents[2] / "book" / "references.bib"


class HTMLTable:
    """An object that a notebook displays as an HTML table (``_repr_html_``); its plain-text
    form is one short line, never a dump of the table."""

    def __init__(self, html_text: str, what: str = "table"):
        self.html = html_text
        self.what = what

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return f"{self.what} (HTML)"


ClaimsHTML = HTMLTable  # the name the chapters first used


def anchor_id(text: str) -> str:
    """The id docutils gives ``text`` (``docutils.nodes.make_id``, for the keys we use):
    lower case, every run of other characters one hyphen, no hyphen or digit in front."""
    ident = re.sub(r"[^a-z0-9]+", "-", text.lower())
    return re.sub(r"^[-0-9]+|-+$", "", ident)


def reference_link(key: str) -> str:
    """Where a bibliography key's entry is: ``references.html#cite-<key>``."""
    return f"{REFERENCES_PAGE}#{anchor_id('cite-' + key)}"


def _bib_labels(path: Path = BIBFILE) -> dict[str, str]:
    """Short labels ("Ioffe & Szegedy 2015", "De & Smith 2020", "Frankle et al. 2021") by key,
    read from the bibliography; an entry's ``shorthand`` field wins, and an entry without
    authors is labelled by its title."""
    if not path.exists():
        return {}
    labels = {}
    for entry in re.split(r"\n(?=@)", path.read_text()):
        m = re.match(r"@\w+\s*\{\s*([^,\s]+)\s*,", entry)
        if not m:
            continue
        fields = dict(re.findall(r"^\s*(\w+)\s*=\s*\{(.*)\},?\s*$", entry, flags=re.M))
        names = [n.split(",")[0].strip("{} ") for n in fields.get("author", "").split(" and ") if n.strip()]
        year = fields.get("year", "")
        if fields.get("shorthand"):  # e.g. the two editions of one book
            labels[m.group(1)] = f"{fields['shorthand']} {year}".strip()
            continue
        if not names:
            title = re.sub(r"[{}]", "", fields.get("title", m.group(1)))
            labels[m.group(1)] = title.split(":")[0]
            continue
        who = (names[0] if len(names) == 1 else f"{names[0]} & {names[1]}" if len(names) == 2
               else f"{names[0]} et al.")
        labels[m.group(1)] = f"{who} {year}".strip()
    return labels


_LABELS: dict[str, str] | None = None


def source_label(key: str) -> str:
    """The short label of a bibliography key (the key itself when the bibliography lacks it)."""
    global _LABELS
    if _LABELS is None:
        _LABELS = _bib_labels()
    return _LABELS.get(key, key)


def _source_cell(row) -> str:
    key = row.get("source") or ""
    where = html.escape(str(row.get("where") or ""))
    if not key:
        return "our code" + (f", {where}" if where else "")
    link = f'<a href="{reference_link(key)}">{html.escape(source_label(key))}</a>'
    return link + (f", {where}" if where else "")


def _claim_cell(row) -> str:
    parts = [f'<span class="claim-statement">{html.escape(str(row["statement"]))}</span>',
             f'<span class="claim-id">{html.escape(str(row["claim"]))}</span>']
    rule = str(row.get("rule") or "")
    if rule:
        rule = rule[0].upper() + rule[1:]
        reason = str(row.get("reason") or "")
        parts.append(f'<span class="claim-rule">{html.escape(rule)}'
                     + (f" ({html.escape(reason)})" if reason else "") + ".</span>")
    if row.get("scale"):
        parts.append(f'<span class="claim-scale">Measured: {html.escape(str(row["scale"]))}.</span>')
    return "<br>".join(parts)


def _cell(row, key: str) -> str:
    if key == "statement":
        return _claim_cell(row)
    if key == "cite":
        return _source_cell(row)
    if key in ("low", "high", "ours"):
        value = str(row.get(key, ""))
        return "–" if value in ("n/a", "", "nan", "None") else html.escape(value)
    if key == "paper":
        flags = [f for f, on in (("unverified", row.get("unverified")), ("post hoc", row.get("post_hoc"))) if on]
        return html.escape(str(row["paper"])) + "".join(f'<br><span class="flag">({f})</span>' for f in flags)
    return html.escape(str(row[key]))


def claims_rows_html(rows, group: str | None = None, links: dict[str, str] | None = None) -> HTMLTable:
    """Rows (dicts with the keys of :meth:`Claim.row`) as one HTML table, every row.
    ``group``: a key (e.g. ``"chapter"``) whose value heads each run of rows; ``links``: the page
    each group's heading links to."""
    rows = list(rows)
    head = "".join(f'<th class="col-{k}">{html.escape(title)}</th>' for k, title in SHOWN)
    body, current = [], object()
    for row in rows:
        if group is not None and row[group] != current:
            current = row[group]
            name = html.escape(str(current))
            target = (links or {}).get(current)
            name = f'<a href="{html.escape(target)}">{name}</a>' if target else name
            body.append(f'<tr class="group"><th colspan="{len(SHOWN)}">{name}</th></tr>')
        cells = []
        for key, _ in SHOWN:
            cls = f' class="col-{key}"'
            if key == "verdict":
                cls = f' class="col-verdict verdict {row["verdict"].replace(" ", "-")}"'
            cells.append(f"<td{cls}>{_cell(row, key)}</td>")
        body.append(f'<tr id="claim-{html.escape(anchor_id(str(row["claim"])))}">' + "".join(cells) + "</tr>")
    return HTMLTable('<table class="bnrepro-claims"><thead><tr>' + head + "</tr></thead><tbody>"
                     + "".join(body) + "</tbody></table>", what=f"claims table, {len(rows)} rows")


def show_claims(claims) -> HTMLTable:
    """Every claim as one row of an HTML table (no elision; the text wraps)."""
    return claims_rows_html([c.row() if isinstance(c, Claim) else c for c in claims])


def show_table(frame, index: bool = True, caption: str | None = None) -> HTMLTable:
    """A small pandas DataFrame as an HTML table with every row and column (class
    ``bnrepro-table``); missing values show as a dash, never as NaN or None."""
    import math

    def fmt(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return html.escape(str(v))

    cols = list(frame.columns)
    head = ([f"<th>{html.escape(str(frame.index.name or ''))}</th>"] if index else []) + \
        [f"<th>{html.escape(str(c))}</th>" for c in cols]
    body = []
    for idx, row in frame.iterrows():
        cells = ([f"<th>{fmt(idx)}</th>"] if index else []) + [f"<td>{fmt(row[c])}</td>" for c in cols]
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return HTMLTable(f'<table class="bnrepro-table">{cap}<thead><tr>' + "".join(head) + "</tr></thead><tbody>"
                     + "".join(body) + "</tbody></table>", what=f"table, {len(frame)} rows")
