"""The ONNX graphs of an artifact, built without torch (they need the `onnx` package, not the engine's
runtime): `step` writes model.onnx from weights, `generation` writes generate.onnx from model.onnx.

Both the trainer (export) and the engine (`lstmgen add-graph`) build them, so they live beside the
engine and import nothing from lstmgen.trainer. Import the modules when needed: the engine's runtime
never imports onnx.
"""
