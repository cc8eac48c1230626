"""lstmgen.exported: the shipped, ready-to-use artifacts (one folder each), found by name.

`Generator.load("names")` and `lstmgen generate names` look here; see docs/MODELS.md for each model.
"""
