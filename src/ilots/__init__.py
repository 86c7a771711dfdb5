"""ilots: from aerial orthophotos to maps of trees, water and roofs for urban heat-island work.

The package is laid out by role, dependencies pointing one way (checked by ``make lint``)::

    pipeline            the ilots command and its configuration (the only reader of conf/)
    training, inference fit/evaluate/baseline; prediction over whole orthophotos
    tracking            MLflow store, registry, pyfunc
    labeling, data, models, sample
    core                class map, rasters and valid pixels, orthophoto listing, files, paths
"""
