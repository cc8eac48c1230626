"""The bench's models: fixed random weights (same for every backend) and the artifacts built from them.

Speed does not depend on what the weights learned, so random weights of the stated sizes stand in
for trained models; `--model DIR` benches a real artifact instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lstmgen.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    MODEL_FILE,
    STATE_PER_LAYER,
    STATE_STACKED,
    Dims,
    IONames,
    Manifest,
    SamplingDefaults,
    sha256_file,
)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # label in tables and JSON
    vocab: int
    embed: int
    hidden: int
    layers: int

    @property
    def dims(self) -> str:
        return f"V={self.vocab} E={self.embed} H={self.hidden} L={self.layers}"


SPECS = {
    "char-small": ModelSpec("char-small", 65, 64, 256, 2),
    "char-medium": ModelSpec("char-medium", 65, 64, 512, 2),
    "word-10k": ModelSpec("word-10k", 10_000, 256, 512, 2),
}


def random_weights(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """PyTorch's default init ranges, state_dict names, float32."""
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(spec.hidden)
    u = lambda *shape: rng.uniform(-k, k, shape).astype(np.float32)  # noqa: E731
    sd = {"embed.weight": rng.standard_normal((spec.vocab, spec.embed)).astype(np.float32),
          "head.weight": u(spec.vocab, spec.hidden), "head.bias": u(spec.vocab)}
    for layer in range(spec.layers):
        inp = spec.embed if layer == 0 else spec.hidden
        sd[f"lstm.weight_ih_l{layer}"] = u(4 * spec.hidden, inp)
        sd[f"lstm.weight_hh_l{layer}"] = u(4 * spec.hidden, spec.hidden)
        sd[f"lstm.bias_ih_l{layer}"] = u(4 * spec.hidden)
        sd[f"lstm.bias_hh_l{layer}"] = u(4 * spec.hidden)
    return sd


def write_artifact(folder: Path, spec: ModelSpec, sd: dict[str, np.ndarray], int8: bool = False,
                   generation_graph: bool = False, state: str = STATE_PER_LAYER) -> Path:
    """A loadable artifact over synthetic tokens (one per id) for the engine rows (and generate.onnx for the graph
    rows); state=STATE_STACKED writes it in format 1, as lstmgen wrote artifacts before format 2 (the breakdown's
    before)."""
    import onnx

    from lstmgen.graphs.step import build_step_graph

    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / ("fp32.onnx" if int8 else MODEL_FILE)
    onnx.save(build_step_graph(sd, spec.layers, state), fp32)
    if int8:
        import logging

        from onnxruntime.quantization import QuantType, quantize_dynamic

        logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice on pre-processing is not progress
        quantize_dynamic(str(fp32), str(folder / MODEL_FILE), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["LSTM", "MatMul", "Gather"])
        fp32.unlink()
    tokens = [f"t{i}" for i in range(spec.vocab)]
    m = Manifest(tokenizer={"level": "word", "tokens": tokens, "lowercase": False, "eos_id": None, "unk_id": 0},
                 records=False, dims=Dims(spec.vocab, spec.embed, spec.hidden, spec.layers), start_ids=[0],
                 model_sha256=sha256_file(folder / MODEL_FILE), precision="int8" if int8 else "fp32",
                 defaults=SamplingDefaults(), name=spec.name, training={"note": "random weights for benchmarking"},
                 io=IONames(state=state), format_version=1 if state == STATE_STACKED else FORMAT_VERSION)
    (folder / MANIFEST_FILE).write_text(m.to_json())
    if generation_graph:
        from lstmgen.graphs.generation import add_generation_graph

        add_generation_graph(folder)
    return folder
