"""`lstmgen upgrade`: an artifact of an older format rewritten in the current one, from its own files.

Format 1 -> 2: model.onnx takes and returns the LSTM state per layer (lstmgen.graphs.step.per_layer_state:
the same nodes and the very same weight bytes, without the Slice and Concat nodes around the layers, so
the text is unchanged and every step runs 2L + 2 nodes fewer); generate.onnx and generate-web.onnx are
rebuilt around it; the manifest records format 2 and the new sha256. It works for fp32 and int8 alike
and needs no training checkpoint. The folder is rewritten as an export writes one
(lstmgen.manifest.write_artifact_atomically): an interrupted upgrade leaves the old artifact as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..manifest import (
    FORMAT_VERSION,
    GENERATE_FILE,
    GENERATE_WEB_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    STATE_PER_LAYER,
    Manifest,
    read_manifest,
    sha256_file,
    write_artifact_atomically,
)
from .generation import write_generation_graph
from .step import per_layer_state

REWRITTEN = (MODEL_FILE, MANIFEST_FILE, GENERATE_FILE, GENERATE_WEB_FILE)


def upgrade_artifact(folder: str | os.PathLike) -> tuple[Manifest, bool]:
    """Rewrite the artifact in `folder` in the current format; returns its manifest and whether it changed."""
    import onnx

    folder = Path(folder)
    m = read_manifest(folder)
    if m.format_version >= FORMAT_VERSION:
        return m, False
    step = per_layer_state(onnx.load(str(folder / MODEL_FILE)))

    def fill(tmp: Path) -> None:
        for f in folder.iterdir():
            if f.is_file() and f.name not in REWRITTEN:
                shutil.copyfile(f, tmp / f.name)
        onnx.save(step, tmp / MODEL_FILE)
        m.format_version, m.io.state = FORMAT_VERSION, STATE_PER_LAYER
        m.model_sha256 = sha256_file(tmp / MODEL_FILE)
        write_generation_graph(tmp, m)
        (tmp / MANIFEST_FILE).write_text(m.to_json(), encoding="utf-8")
        Manifest.from_dict(json.loads((tmp / MANIFEST_FILE).read_text(encoding="utf-8")), "upgraded manifest")

    write_artifact_atomically(folder, fill)
    return m, True
