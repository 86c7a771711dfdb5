"""The annotators' loop with a live Label Studio server: ``ilots labeling init | publish | pull |
prelabel | bootstrap``.
"""
