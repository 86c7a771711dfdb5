"""Training data: masks from Label Studio exports (the labels stage), chips with a spatially
separated split (the tiles stage), chip and random-window datasets, augmentation."""
