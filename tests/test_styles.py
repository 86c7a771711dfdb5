"""QGIS styles in the products' GeoPackages: the layer_styles table as QGIS reads it."""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from contextlib import closing
from pathlib import Path

import pyogrio
import pytest
from products_data import write_products

from ilots.core.errors import IlotsError
from ilots.products.styles import DEFAULT_LAYERS, layer_qml, write_styles


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_products(tmp_path_factory.mktemp("products"))


def styles_table(gpkg: Path) -> list[dict[str, object]]:
    frame = pyogrio.read_dataframe(gpkg, layer="layer_styles")
    return frame.to_dict("records")


def test_every_layer_gets_one_default_style(products: dict[str, Path]) -> None:
    styled = {name: write_styles(path) for name, path in products.items()}
    assert styled == {
        "ilots": ["trees", "tree_points", "water", "roofs"],
        "grid": ["grid"],
        "priority": ["priority"],
    }
    rows = styles_table(products["ilots"])
    assert sorted(r["f_table_name"] for r in rows) == ["roofs", "tree_points", "trees", "water"]
    for row in rows:
        assert row["useAsDefault"] == 1 or row["useAsDefault"] is True
        assert row["f_table_schema"] == ""
        assert row["f_geometry_column"] == "geom"  # the layer's own geometry column, as QGIS matches it
        ET.fromstring(row["styleQML"])
    # the data layers still read, and the table is registered as GDAL does
    assert set(pyogrio.list_layers(products["ilots"])[:, 0]) == {*styled["ilots"], "layer_styles"}
    assert len(pyogrio.read_dataframe(products["ilots"], layer="trees")) == 60
    with closing(sqlite3.connect(products["ilots"])) as db:
        assert db.execute(
            "SELECT data_type FROM gpkg_contents WHERE table_name='layer_styles'"
        ).fetchone() == ("attributes",)


def test_writing_twice_replaces_without_duplicates_and_keeps_user_styles(products: dict[str, Path]) -> None:
    gpkg = products["priority"]
    write_styles(gpkg)
    with closing(sqlite3.connect(gpkg)) as db, db:  # a style a user saved from QGIS
        db.execute(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column,"
            " styleName, styleQML, useAsDefault) VALUES ('', '', 'priority', 'geom', 'mine', '<qgis/>', 1)"
        )
    write_styles(gpkg)
    write_styles(gpkg)
    rows = styles_table(gpkg)
    assert sorted((r["styleName"], bool(r["useAsDefault"])) for r in rows) == [
        ("mine", False),
        ("priority", True),
    ]
    assert pyogrio.read_info(gpkg, layer="layer_styles")["features"] == 2


def test_qml_renderers_and_aliases() -> None:
    priority = ET.fromstring(layer_qml("priority", ["cell_id", "quintile", "low_confidence", "r_share_65p"]))
    rules = priority.findall("renderer-v2/rules/rule")
    assert [r.get("label") for r in rules] == [
        "1 (lowest)",
        "2",
        "3",
        "4",
        "5 (highest)",
        "Low confidence (hatched)",
    ]
    assert rules[-1].get("filter") == '"low_confidence"'
    assert priority.find("renderer-v2/symbols/symbol[@name='5']/layer").get("class") == "LinePatternFill"
    aliases = {a.get("field"): a.get("name") for a in priority.findall("aliases/alias")}
    assert aliases["quintile"] == "Priority quintile (1 lowest, 5 highest)"
    assert aliases["r_share_65p"] == "Share aged 65+: percentile rank in the city (0-1)"

    roofs = ET.fromstring(layer_qml("roofs", ["area_m2", "albedo_proxy", "dark_roof"]))
    assert roofs.find("renderer-v2/rules/rule").get("filter") == '"dark_roof"'
    aliases = {a.get("field"): a.get("name") for a in roofs.findall("aliases/alias")}
    assert aliases == {
        "area_m2": "Area (m²)",
        "albedo_proxy": "Albedo proxy (relative, 0-1)",
        "dark_roof": "Dark roof",
    }
    grid = ET.fromstring(layer_qml("grid"))
    assert grid.find("renderer-v2").get("attr") == "canopy_share"
    assert len(grid.findall("renderer-v2/ranges/range")) == 5
    for layer in DEFAULT_LAYERS:
        assert ET.fromstring(layer_qml(layer)).tag == "qgis"


def test_bad_inputs_name_the_file(tmp_path: Path, products: dict[str, Path]) -> None:
    with pytest.raises(IlotsError, match="does not exist"):
        write_styles(tmp_path / "none.gpkg")
    text = tmp_path / "notes.gpkg"
    text.write_text("not a database")
    with pytest.raises(IlotsError, match="not a GeoPackage"):
        write_styles(text)
    with pytest.raises(IlotsError, match="has no layer lakes"):
        write_styles(products["grid"], {"lakes": "<qgis/>"})
    with pytest.raises(IlotsError, match="not well-formed XML"):
        write_styles(products["grid"], {"grid": "<qgis>"})
    with pytest.raises(IlotsError, match="no QGIS style for layer"):
        layer_qml("lakes")
