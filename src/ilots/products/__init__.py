"""Heat-island products: from class rasters to where a city acts first.

Stages (after ``predict``), each an ``ilots <stage>`` command and a ``dvc.yaml`` stage:

- ``inventory`` (``products/inventory.py``, polygons streamed by ``products/polygons.py``):
  ``experiments/products/ilots.gpkg`` with layers
  - ``trees``: one polygon per crown: ``crown_id``, ``area_m2``, ``crown_diam_m``, ``height_m``
    (null without a canopy height raster), ``probability`` (mean tree probability, null without
    probability rasters), ``x``, ``y`` (centroid, layer CRS), ``ortho``;
  - ``tree_points``: a point per crown (its top): ``crown_id``, ``crown_diam_m``, ``height_m``;
  - ``water``: ``water_id``, ``area_m2``, ``perimeter_m``, ``water_type`` (pool, pond, canal_or_river),
    ``elongation``, ``compactness``, ``probability``, ``ortho``;
  - ``roofs``: ``roof_id``, ``area_m2``, ``building_id``, ``building_height_m``,
    ``roof_min_alt_m``, ``roof_max_alt_m``, ``roof_rise_m``, ``flat`` (null without a building
    layer), ``albedo_proxy`` (0-1), ``dark_roof``, ``greenable_m2``, ``probability``, ``ortho``.
  All layers in the predictions' CRS.
- ``grid`` (``products/grid.py``, context readers in ``products/context.py``):
  ``experiments/products/grid.gpkg``, layer ``grid``: INSEE 200 m cells (EPSG:3035) clipped to the
  covered area: ``cell_id`` (``CRS3035RES200mN{y}E{x}``), ``covered_m2``, ``valid_share``,
  ``canopy_share``, ``water_share``, ``roof_share``, ``low_veg_share``, ``mineral_share`` (shares of
  the valid area), ``trees_per_ha``, ``flat_roof_m2``, ``greenable_roof_m2``, ``roof_albedo``, and
  when configured ``lst_mean_c``, ``lst_p90_c``, ``lst_anomaly_c`` (daytime land surface
  temperature, Landsat), ``lcz`` (majority Local Climate Zone), ``population``, ``share_65p``,
  ``share_under6``, ``poverty_rate``, ``living_standard_eur``, ``isolation``, ``imputed``
  (INSEE Filosofi).
- ``priority`` (``products/priority.py``): ``experiments/products/priority.gpkg``, layer
  ``priority``: the grid's columns plus each term's value and percentile rank (``r_<value>``), ``exposure``,
  ``sensitivity``, ``capacity`` (lack of capacity to cope), ``priority`` (0-1), ``quintile`` (1-5),
  ``rank``, ``low_confidence`` and ``confidence_note``, ``action_potential``.
- ``report`` (``products/report.py``): ``experiments/products/report.html``, one self-contained
  page (no external URL) that opens offline.

Every layer carries a QML style in the GeoPackage's ``layer_styles`` table
(``products/styles.py``), so QGIS opens it styled.
"""
