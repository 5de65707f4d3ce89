"""The jobs the platform exists for, each one command (and, for batch work, one pipeline) over the
serving endpoint: ad variants (ad.py), virtual try-on (tryon.py), product design from a sketch
(design.py), scene edits over images or frames (edit.py) and dataset augmentation (augment.py).
jobs.py is what they share: the recipe, the server-side check before generating, the output folder.
"""
