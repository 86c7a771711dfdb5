"""The heat-island report: what a planner notices on the page, built from synthetic products."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import shapely
from products_data import extent, objects, priority, scores

from ilots.core.errors import IlotsError
from ilots.products.report import (
    WITHOUT_FILOSOFI,
    WITHOUT_LST,
    build_report,
    fmt_area,
    fmt_number,
    write_report,
)


class Page(HTMLParser):
    """The page's resource references and its tables' text, row by row."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.references: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.references += [v or "" for k, v in attrs if k in ("src", "href", "xlink:href", "data", "action")]
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(re.sub(r"[ \t\r\n]+", " ", "".join(self._cell)).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def report(**changes: Any) -> str:
    inputs: dict[str, Any] = {
        "priority": priority(),
        "objects": objects(),
        "extent": extent(),
        "scores": {"U-Net": scores(0.872), "Random forest (baseline)": scores(0.855)},
        "lst_acquired": "2023-07-18",
        "scores_note": "The sample city is synthetic.",
    }
    return build_report(**(inputs | changes))


@pytest.fixture(scope="module")
def page() -> str:
    return report()


def test_the_page_is_self_contained(tmp_path: Path) -> None:
    dest = write_report(
        tmp_path / "out" / "report.html",
        priority=priority(),
        objects=objects(),
        extent=extent(),
        scores={"U-Net": scores(0.872)},
    )
    text = dest.read_text(encoding="utf-8")
    parsed = Page(text)
    assert parsed.references, "the plots are inline images"
    assert all(ref.startswith(("data:", "#")) for ref in parsed.references)
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE)  # no URL at all
    assert "@import" not in text and "<script src" not in text
    assert list(dest.parent.iterdir()) == [dest]  # written atomically: no temporary file left
    assert len(text.encode()) < 400_000


def test_top_cells_first_with_their_terms(page: str) -> None:
    cells = priority().sort_values("priority", ascending=False)
    top = cells.iloc[0]
    table = Page(page).tables[0]
    assert table[0][:2] == ["Rank", "Cell (INSEE 200 m)"]
    assert len(table) == 1 + 10
    first = table[1]
    assert first[0] == "1" and top["cell_id"] in first[1]
    why = first[-2]
    # its highest-ranked term comes first, with its value and rank
    ranks = {c[2:]: top[c] for c in cells.columns if c.startswith("r_")}
    best = max(ranks, key=lambda c: ranks[c])
    labels = {
        "canopy_share": "canopy",
        "mineral_share": "mineral surfaces",
        "lst_anomaly_c": "LST",
        "share_65p": "65+",
        "share_under6": "under 6",
        "poverty_rate": "poverty",
        "isolation": "living alone",
    }
    assert why.startswith(labels[best])
    assert f"rank {ranks[best]:.2f}" in why
    assert "LST" in why and "65+" in why
    assert first[-1] == top["action_potential"]
    # the map: a hover note per cell, the first cell's included
    assert page.count("<title>") >= len(cells) + 2
    assert f"<title>{top['cell_id']}: priority {top['priority']:.3f}" in page


def test_totals_are_the_sums_of_the_layers(page: str) -> None:
    layers = objects()
    totals = {row[0]: row[1:] for row in Page(page).tables[1][1:]}
    roofs = layers["roofs"]
    assert totals["Tree canopy"][0].startswith(fmt_area(layers["trees"]["area_m2"].sum()))
    assert totals["Trees (crowns)"][0] == fmt_number(len(layers["trees"]))
    assert totals["Water"][0].startswith(fmt_area(layers["water"]["area_m2"].sum()))
    assert totals["Roofs"][0].startswith(fmt_area(roofs["area_m2"].sum()))
    assert totals["Dark roofs"][0].startswith(fmt_area(roofs.loc[roofs["dark_roof"], "area_m2"].sum()))
    assert totals["Greenable roofs"][0].startswith(fmt_area(roofs["greenable_m2"].sum()))
    covered = shapely.union_all([p for _, p in extent()]).area
    assert totals["Area covered by the orthophotos"][0] == f"{fmt_area(covered)} (50.0\u202fha)"
    share = 100 * layers["trees"]["area_m2"].sum() / covered
    assert totals["Tree canopy"][1] == f"{share:.1f}\u202f% of the covered area"


def test_numbers_are_readable() -> None:
    assert fmt_number(1234567.4) == "1\u202f234\u202f567"
    assert fmt_area(12345.6) == "12\u202f346\u202fm²"
    assert fmt_number(-0.2) == "0"


def test_scores_show_both_models_with_intervals(page: str) -> None:
    table = Page(page).tables[2]
    assert table[0][:3] == ["Score (IoU, 0-1)", "U-Net", "Random forest (baseline)"]
    miou = next(row for row in table if row[0] == "mean IoU")
    assert miou[1] == "0.872 [0.852\u20130.887]" and miou[2] == "0.855 [0.835\u20130.870]"
    assert {row[0] for row in table[1:]} == {"mean IoU", "background", "tree", "water", "roof"}
    assert "Scores on the 12 test blocks of the annotated data" in page
    assert "The sample city is synthetic." in page


def test_missing_context_gives_a_valid_page_that_says_so() -> None:
    page = report(priority=priority(lst=False, filosofi=False, lcz=False), lst_acquired=None, scores={})
    assert WITHOUT_LST in page and WITHOUT_FILOSOFI in page
    assert "No canopy vs temperature plot" in page
    assert "No test scores were given" in page
    assert "Land surface temperature: Landsat" not in page
    Page(page)  # parses
    with_lst = report()
    assert WITHOUT_LST not in with_lst and "acquired 2023-07-18" in with_lst


def test_missing_layers_and_columns() -> None:
    cells = priority().drop(columns=["rank", "quintile", "low_confidence", "action_potential"])
    page = report(priority=cells, objects={"trees": objects()["trees"]}, extent=[])
    totals = {row[0]: row[1:] for row in Page(page).tables[1][1:]}
    assert totals["Roofs"][0] == "not available"
    assert totals["Area covered by the orthophotos"][0] != "not available"  # from the cells


def test_bad_priority_layer_names_the_file() -> None:
    with pytest.raises(IlotsError, match=r"priority\.gpkg has no column priority"):
        report(priority=priority().drop(columns=["priority"]))
    with pytest.raises(IlotsError, match="has no cell"):
        report(priority=priority().iloc[:0])
    with pytest.raises(IlotsError, match="not a projected CRS"):
        report(objects={name: layer.to_crs(4326) for name, layer in objects().items()})
