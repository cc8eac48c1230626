"""What the playground page at `/` needs beyond the generation endpoints: its "inspect" view's data
(`POST /v1/inspect`, built on lstmgen.inspection) and the read-only files of its "run in my browser"
switch (the JavaScript generator of js/, onnxruntime-web's files, and each served model's artifact).

    POST /v1/inspect               {"model", "text", "top", "cells"} -> pieces, surprisal, top cells per
                                   feature and the activations of those cells (and of "cells") per token
    GET  /js/{file}                js/lstmgen.mjs, session.mjs, web.mjs       (no API key needed: code only)
    GET  /js/ort/{file}            onnxruntime-web's .mjs and .wasm files     (no API key needed: code only)
    GET  /artifacts/{model}/{file} manifest.json, generate-web.onnx, model.onnx of a served model
    POST /v1/pattern               {"model", "regex", "min_length", "max_length", "ban", "allow_unk"} -> the
                                   pattern compiled over the model's vocabulary, as `lstmgen compile-pattern`
                                   writes it (js/lstmgen.mjs's `pattern`)

The JavaScript files exist only in a checkout of the repository with `npm ci --prefix js` done; a wheel
has none, and then the page shows the switch disabled with `browser_runtime_missing()`'s reason.
"""

from __future__ import annotations

import math
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse

from ..errors import LstmgenError
from ..inspection import FEATURE_HELP, Inspection, correlate, inspect_text, parse_cell, text_features, top_cells
from ..manifest import GENERATE_WEB_FILE, MANIFEST_FILE, MODEL_FILE
from .http import HttpError, given, read_body
from .served import Models

JS_DIR = Path(__file__).resolve().parents[2] / "js"  # the repository's js/ beside engine/ (absent from a wheel)
ORT_DIST = JS_DIR / "node_modules" / "onnxruntime-web" / "dist"
JS_FILES = ("lstmgen.mjs", "options.mjs", "session.mjs", "web.mjs")
ARTIFACT_FILES = (MANIFEST_FILE, GENERATE_WEB_FILE, MODEL_FILE)
MEDIA_TYPES = {".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
               ".onnx": "application/octet-stream"}
INSPECTIONS_AT_ONCE = 2  # more wait their turn: one holds up to 20,000 x layers x hidden x 8 bytes of states


# -- inspect ------------------------------------------------------------------------------------------
async def inspect_endpoint(request: Request) -> JSONResponse:
    """Surprisal and the cells that track the text's features, for the playground's inspect view."""
    models: Models = request.app.state.models
    body = await read_body(request, request.app.state.schemas.inspect)
    name = models.pick(body.model)
    gen = models.generators[name]
    d = gen.manifest.dims
    chosen = [parse_cell(spec, d.num_layers, d.hidden_size) for spec in body.cells or []]

    def work() -> JSONResponse:  # seconds of NumPy and ONNX Runtime, and a JSON of MBs: off the event loop
        ins = inspect_text(gen, body.text, max_tokens=models.limits.max_inspect_tokens)
        return JSONResponse({"model": name, **inspection_json(ins, body.top or 3, chosen)})

    async with request.app.state.inspect_slots:  # each one holds every token's states in memory
        return await run_in_threadpool(work)


def inspection_json(ins: Inspection, top: int, chosen: list) -> dict:
    """The answer of /v1/inspect: every array has one entry per token of `pieces`."""
    features = {}
    shown = {str(cell): cell for cell in chosen}
    for name, corr in correlate(ins, text_features(ins)).items():
        best = top_cells(corr, top)
        features[name] = {"help": FEATURE_HELP[name], "top": [{"cell": str(cell), "r": round(r, 4)} for cell, r in best]}
        shown.update((str(cell), cell) for cell, _ in best)
    return {
        "level": ins.level, "records": ins.records, "pieces": ins.pieces,
        "surprisal": [None if math.isnan(v) else v for v in ins.surprisal.tolist()],  # full precision: sums to the score
        "nats": ins.total_nats, "tokens_predicted": ins.tokens_predicted, "nats_per_token": ins.nats_per_token,
        "oov": ins.oov,
        "features": features,
        "activations": {spec: [round(v, 3) for v in ins.state(c.kind, c.layer, c.unit).tolist()] for spec, c in shown.items()},
    }


# -- compiled patterns for "run in my browser" ------------------------------------------------------------
async def pattern_endpoint(request: Request) -> JSONResponse:
    """A regex / length bounds compiled over a served model's vocabulary (lstmgen.patterns), for the browser."""
    models: Models = request.app.state.models
    body = await read_body(request, request.app.state.schemas.pattern)
    name = models.pick(body.model)
    gen = models.generators[name]
    options = given(body, "model")
    pattern = await run_in_threadpool(lambda: gen.pattern(**options))  # cached; milliseconds, more for word models
    if pattern is None:
        raise LstmgenError("give a pattern: regex, min_length or max_length")
    return JSONResponse(pattern.to_dict(name))


# -- files for "run in my browser" ----------------------------------------------------------------------
def browser_runtime_missing() -> str | None:
    """Why the page cannot generate in the browser here, in one line; None when it can."""
    if not all((JS_DIR / f).is_file() for f in JS_FILES):
        return "the JavaScript generator (js/) is not installed with this lstmgen: run the server from a checkout of the repository"
    if not ORT_DIST.is_dir():
        return "onnxruntime-web is not installed: run `npm ci --prefix js` in the repository"
    return None


def static_file(path: Path) -> FileResponse:
    # no-cache: the browser revalidates (cheap 304s), so a re-exported model or updated runtime is never stale
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})


async def js_file(request: Request) -> FileResponse:
    name = request.path_params["file"]
    if name not in JS_FILES or not (JS_DIR / name).is_file():
        raise HttpError(404, f"no such file: /js/{name}")
    return static_file(JS_DIR / name)


async def ort_file(request: Request) -> FileResponse:
    name = request.path_params["file"]  # a path parameter holds no "/", so it stays inside ORT_DIST
    path = ORT_DIST / name
    if Path(name).suffix not in (".mjs", ".wasm") or name.startswith(".") or not path.is_file():
        raise HttpError(404, f"no such file: /js/ort/{name}")
    return static_file(path)


async def artifact_file(request: Request) -> FileResponse:
    """A served model's file that the browser generator loads (the API key is checked before this)."""
    models: Models = request.app.state.models
    name, file = models.pick(request.path_params["model"]), request.path_params["file"]
    path = models.generators[name].folder / file
    if file not in ARTIFACT_FILES or not path.is_file():
        raise HttpError(404, f"{name} has no {file} to serve (served: {', '.join(ARTIFACT_FILES)})")
    return static_file(path)
