"""How the book shows a chapter's claims: a full HTML table, every row, wrapped text.

pandas elides long tables and cuts long cells; :func:`show_claims` renders every
row with the verdict visible at the article's width.
"""

from __future__ import annotations

import html

from .claims import claims_table

#: The columns of a chapter's claims table, in reading order, with their headings.
SHOWN = (("statement", "claim"), ("paper", "paper"), ("ours", "ours (mean)"), ("interval", "95% interval"),
         ("n", "n"), ("verdict", "verdict"), ("rule", "rule"), ("kind", "kind"), ("cite", "source"),
         ("scale", "scale"))


class ClaimsHTML:
    """An object that a notebook displays as an HTML table (``_repr_html_``)."""

    def __init__(self, html_text: str):
        self.html = html_text

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return "claims table (HTML)"


def _cell(row, key: str) -> str:
    if key == "interval":
        return "" if row["low"] == "n/a" else f"[{row['low']}, {row['high']}]"
    if key == "cite":
        src = row["source"]
        return f"{src}, {row['where']}" if src else "our code"
    value = row[key]
    return str(value)


def show_claims(claims) -> ClaimsHTML:
    """Every claim as one row of an HTML table (no elision; the text wraps)."""
    table = claims_table(claims, all_columns=True).reset_index()
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in SHOWN)
    body = []
    for _, row in table.iterrows():
        flags = (" (unverified)" if row["unverified"] else "") + (" (post hoc)" if row["post_hoc"] else "")
        cells = []
        for key, _ in SHOWN:
            text = _cell(row, key) + (flags if key == "paper" else "")
            cls = f' class="verdict {row["verdict"].replace(" ", "-")}"' if key == "verdict" else ""
            cells.append(f"<td{cls}>{html.escape(text)}</td>")
        body.append(f'<tr id="claim-{html.escape(row["claim"])}">' + "".join(cells) + "</tr>")
    return ClaimsHTML('<table class="bnrepro-claims"><thead><tr>' + head + "</tr></thead><tbody>"
                      + "".join(body) + "</tbody></table>")
