"""See inside a model: what it reads (`reading`: per-token surprisal and states), which cells track
which feature of the text (`features`), and the HTML page of `lstmgen inspect` (`page`).

    from lstmgen.inspection import inspect_text
    ins = inspect_text("shakespeare", "First Citizen:\\nBefore we proceed any further, hear me speak.\\n")
"""

from .features import FEATURE_HELP, Cell, correlate, parse_cell, saturation, text_features, top_cells
from .reading import MAX_INSPECT_TOKENS, Inspection, inspect_text

__all__ = ["FEATURE_HELP", "MAX_INSPECT_TOKENS", "Cell", "Inspection", "correlate", "inspect_text", "parse_cell",
           "saturation", "text_features", "top_cells"]
