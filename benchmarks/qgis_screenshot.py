"""Render product GeoPackages headless with QGIS, with the styles QGIS finds in their layer_styles.

Checks by eye that QGIS opens the layers styled (``ilots.products.styles``): loads each layer as
QGIS does (its default style comes from the GeoPackage), prints the renderer and aliases it got,
and renders them to a PNG. Needs QGIS's Python bindings (Debian: ``apt-get install python3-qgis``),
so it runs with the system Python, not the project's environment; not a test, CI doesn't need QGIS.

    /usr/bin/python3 benchmarks/qgis_screenshot.py --out /tmp/shots/qgis.png \
        experiments/products/priority.gpkg:priority experiments/products/ilots.gpkg:roofs \
        experiments/products/ilots.gpkg:water experiments/products/ilots.gpkg:trees

Layers are drawn in the order given, the last on top; the map is in the CRS of the first and framed
on it (``--extent-layer`` to choose another).
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("layers", nargs="+", help="GPKG:LAYER, drawn bottom to top")
    parser.add_argument("--out", default="/tmp/shots/qgis.png")
    parser.add_argument("--size", default="1400x800", help="WIDTHxHEIGHT in pixels")
    parser.add_argument("--extent-layer", type=int, default=0, help="index of the layer framing the map")
    args = parser.parse_args()

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import QgsApplication, QgsMapRendererParallelJob, QgsMapSettings, QgsVectorLayer
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    app = QgsApplication([], False)
    app.initQgis()
    layers = []
    for spec in args.layers:
        path, _, name = spec.rpartition(":")
        layer = QgsVectorLayer(f"{path}|layername={name}", name, "ogr")
        if not layer.isValid():
            print(f"{spec}: QGIS cannot open it", file=sys.stderr)
            return 1
        aliases = {
            f.name(): layer.attributeAlias(i) for i, f in enumerate(layer.fields()) if layer.attributeAlias(i)
        }
        print(
            f"{name}: renderer {layer.renderer().type()}, {len(aliases)} aliases,"
            f" e.g. {list(aliases.items())[:2]}"
        )
        layers.append(layer)
    settings = QgsMapSettings()
    settings.setLayers(layers[::-1])  # QgsMapSettings draws its first layer on top
    frame = layers[args.extent_layer or 0]
    settings.setDestinationCrs(frame.crs())
    extent = frame.extent()
    extent.scale(1.05)
    settings.setExtent(extent)
    width, height = (int(v) for v in args.size.split("x"))
    settings.setOutputSize(QSize(width, height))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    saved = job.renderedImage().save(args.out, "png")
    print(f"{args.out}: {'saved' if saved else 'NOT saved'}")
    app.exitQgis()
    return 0 if saved else 1


if __name__ == "__main__":
    sys.exit(main())
