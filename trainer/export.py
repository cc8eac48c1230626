"""Checkpoint -> artifact folder: model.onnx (ONNX LSTM ops), generate.onnx, manifest.json, records.u64.

The graph is written from the state_dict by lstmgen.graphs.step rather than traced (see there why).
Export then proves itself: PyTorch and ONNX Runtime must agree on random inputs (batch > 1,
time > 1, non-zero state) within 1e-4.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

import lstmgen
from lstmgen.errors import LstmgenError
from lstmgen.generator import Generator
from lstmgen.graphs.generation import write_generation_graph
from lstmgen.graphs.step import OPSET, build_step_graph
from lstmgen.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    RECORDS_FILE,
    Dims,
    IONames,
    Manifest,
    SamplingDefaults,
    read_manifest,
    sha256_file,
    write_artifact_atomically,
)
from lstmgen.tokenizer import Tokenizer

from . import checkpoint
from .checkpoint import Checkpoint
from .config import RunConfig
from .model import LSTMLanguageModel
from .train import plot_curve

PARITY_TOLERANCE = 1e-4
INT8_MAX_LOSS_INCREASE = 0.01  # relative; an int8 export that loses more is reported as failing


def build_onnx(model: LSTMLanguageModel) -> onnx.ModelProto:
    """The model's weights as the engine's step graph (lstmgen.graphs.step)."""
    sd = {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}
    return build_step_graph(sd, model.cfg.num_layers)


def parity(model: LSTMLanguageModel, onnx_path: Path, seed: int = 0) -> float:
    """Max absolute difference of logits and states between PyTorch and ONNX Runtime."""
    import onnxruntime as ort

    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    B, T = 3, 7
    tokens = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    h0 = torch.randn(cfg.num_layers, B, cfg.hidden_size, generator=g) * 0.5
    c0 = torch.randn(cfg.num_layers, B, cfg.hidden_size, generator=g) * 0.5
    model.eval()
    with torch.no_grad():
        logits, (h1, c1) = model(tokens, (h0, c0))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    io, state = IONames(), {"h": (h0.numpy(), h1.numpy()), "c": (c0.numpy(), c1.numpy())}
    states = io.state_tensors(cfg.num_layers)
    feeds = {io.tokens: tokens.numpy()} | {name_in: state[kind][0][layers] for name_in, _, kind, layers in states}
    o_logits, *o_states = sess.run([io.logits, *(name_out for _, name_out, _, _ in states)], feeds)
    diffs = [np.abs(o - state[kind][1][layers]).max() for o, (_, _, kind, layers) in zip(o_states, states)]
    return float(max(np.abs(o_logits - logits.numpy()).max(), *diffs))


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization: LSTM -> DynamicQuantizeLSTM, MatMul -> int8 MatMul, int8 embedding."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer warns about optional pre-processing
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["LSTM", "MatMul", "Gather"])


def export(run_dir: str | Path, out: str | Path, *, int8: bool = False, which: str = "best", name: str | None = None,
           log=print, allow_int8_loss: bool = False, force: bool = False) -> Manifest:
    """Export a run's checkpoint to an artifact folder at `out`, atomically. An artifact already at
    `out` is replaced only if it came from the same run, or with `force`."""
    run_dir, out = Path(run_dir), Path(out)
    ckpt_path = checkpoint.find(run_dir, which)
    ckpt = checkpoint.load(ckpt_path)
    cfg = RunConfig.from_dict(ckpt.config)
    if not force:
        refuse_to_replace(out, ckpt, cfg)
    steps_run = run_steps(run_dir, ckpt, ckpt_path)
    log(f"exporting {ckpt_path.name}: step {ckpt.progress.step} of a {steps_run}-step run")
    model = LSTMLanguageModel(cfg.model)
    model.load_state_dict(ckpt.model)
    model.eval()
    val_path = run_dir / "val.txt"
    val_text = val_path.read_text(encoding="utf-8") if val_path.is_file() else None
    rec_path = run_dir / RECORDS_FILE

    with tempfile.TemporaryDirectory() as scratch:
        fp32_path = Path(scratch) / "fp32.onnx"
        diff = _write_checked_fp32(model, fp32_path, log)
        base = _manifest(ckpt, cfg, fp32_path, val_text, name or out.name, training_record(ckpt, cfg, ckpt_path, steps_run), diff)
        fp32_score = None
        if val_text is not None:
            fp32_score = _score_file(fp32_path, base, val_text, cfg)
            base.export["val_nats_per_token_fp32"] = fp32_score
            log(f"validation (fp32 artifact): {fp32_score:.4f} nats/token")
        model_src = fp32_path
        if int8:
            model_src = Path(scratch) / "int8.onnx"
            _write_checked_int8(fp32_path, model_src, base, (val_text, fp32_score), cfg, allow_int8_loss, log)

        def fill(tmp: Path) -> None:
            shutil.copyfile(model_src, tmp / MODEL_FILE)
            write_generation_graph(tmp, base)
            if ckpt.records and rec_path.is_file():
                shutil.copyfile(rec_path, tmp / RECORDS_FILE)
                base.records_sha256 = sha256_file(tmp / RECORDS_FILE)
            (tmp / MANIFEST_FILE).write_text(base.to_json(), encoding="utf-8")
            Manifest.from_dict(json.loads((tmp / MANIFEST_FILE).read_text()), "exported manifest")

        write_artifact_atomically(out, fill)
    if (run_dir / "metrics.jsonl").is_file():
        plot_curve(run_dir, exported_step=ckpt.progress.step, target=cfg.train.target or None)  # marks what was exported
    size = sum(f.stat().st_size for f in out.iterdir())
    log(f"exported {base.precision} artifact to {out} ({size / 1e6:.2f} MB)")
    return base


def _write_checked_fp32(model: LSTMLanguageModel, path: Path, log) -> float:
    """Write the fp32 model.onnx and check it against PyTorch; returns the largest difference in logits."""
    onnx.save(build_onnx(model), path)
    diff = parity(model, path)
    log(f"parity PyTorch vs ONNX Runtime (fp32): max |diff| = {diff:.2e} (tolerance {PARITY_TOLERANCE:.0e})")
    if not diff <= PARITY_TOLERANCE:
        raise LstmgenError(f"export failed its parity check: ONNX Runtime differs from PyTorch by {diff:.2e}")
    return diff


def _manifest(ckpt: Checkpoint, cfg: RunConfig, fp32_path: Path, val_text: str | None, name: str, training: dict,
              diff: float) -> Manifest:
    """The fp32 artifact's manifest (int8 export then updates precision, sha256 and scores)."""
    tok, d = Tokenizer.from_dict(ckpt.tokenizer), cfg.model
    return Manifest(
        tokenizer=tok.to_dict(), records=ckpt.records,
        dims=Dims(d.vocab_size, d.embed_dim, d.hidden_size, d.num_layers),
        start_ids=[int(i) for i in ckpt.start_ids], model_sha256=sha256_file(fp32_path),
        defaults=SamplingDefaults(max_tokens=_default_max_tokens(ckpt.records, tok, val_text)),
        name=name, training=training,
        export={"parity_max_abs_diff": diff, "parity_tolerance": PARITY_TOLERANCE, "opset": OPSET,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "versions": _versions()})


def _write_checked_int8(fp32_path: Path, int8_path: Path, base: Manifest, scored: tuple[str | None, float | None],
                        cfg: RunConfig, allow_int8_loss: bool, log) -> None:
    """Quantize to int8 and record it in `base`; refuse (unless allow_int8_loss) when the validation
    loss grows more than INT8_MAX_LOSS_INCREASE. scored: (validation text, fp32 score), or Nones."""
    quantize_int8(fp32_path, int8_path)
    base.precision = "int8"
    base.model_sha256 = sha256_file(int8_path)
    val_text, fp32_score = scored
    if fp32_score is None:
        return
    q = _score_file(int8_path, base, val_text, cfg)
    rel = (q - fp32_score) / fp32_score
    base.export.update(val_nats_per_token_int8=q, int8_relative_loss_increase=rel)
    log(f"validation (int8 artifact): {q:.4f} nats/token ({rel:+.2%} vs fp32)")
    if rel > INT8_MAX_LOSS_INCREASE and not allow_int8_loss:
        raise LstmgenError(f"int8 loses {rel:.2%} validation loss (over {INT8_MAX_LOSS_INCREASE:.0%});"
                           " not exported (ship fp32, or pass --allow-int8-loss)")


def refuse_to_replace(out: Path, ckpt: Checkpoint, cfg: RunConfig) -> None:
    """One line if `out` holds something other than an earlier export of this same run."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    try:
        existing = read_manifest(out).training
    except LstmgenError:
        raise LstmgenError(f"--out {out} exists and is not an lstmgen artifact; pick another folder") from None
    if existing.get("run_id"):
        same = existing["run_id"] == ckpt.run_id
    else:  # exported before runs had an id: the same corpus, seed and model settings count as the same run
        old = existing.get("config", {})
        same = (existing.get("corpus"), existing.get("seed"), old.get("model")) == (ckpt.corpus, cfg.train.seed,
                                                                                  cfg.to_dict()["model"])
    if not same:
        raise LstmgenError(f"{out} holds an artifact exported from another run; pass --force to replace it, or pick"
                           " another --out")


def run_steps(run_dir: Path, exported: Checkpoint, exported_path: Path) -> int:
    """Steps the whole run took (last.pt), which may be past the exported (best) checkpoint."""
    last = run_dir / checkpoint.LAST
    if not last.is_file() or exported_path.name == checkpoint.LAST:  # last.pt is loaded already
        return exported.progress.step
    return max(exported.progress.step, checkpoint.load(last).progress.step)


def training_record(ckpt: Checkpoint, cfg: RunConfig, ckpt_path: Path, steps_run: int) -> dict:
    """The manifest's `training` section: provenance and the exported checkpoint's place in its run.

    `steps` is the exported checkpoint's step (the weights' age); `run_steps` is how far the run went."""
    p = ckpt.progress
    record = {"run_id": ckpt.run_id, "corpus": ckpt.corpus, "seed": cfg.train.seed, "steps": p.step, "run_steps": steps_run,
              "epochs_started": p.epoch + 1, "train_seconds": round(p.elapsed, 1), "machine": ckpt.machine,
              "checkpoint": ckpt_path.name,
              "val_nats_per_token": p.best_val if ckpt_path.name == checkpoint.BEST else p.last_val,
              "eval_segments": cfg.train.eval_segments, "config": cfg.to_dict()}
    if ckpt.init_from is not None:
        record["init_from"] = ckpt.init_from
    return record


def _score_file(onnx_path: Path, manifest: Manifest, val_text: str, cfg: RunConfig) -> float:
    """Validation loss of an ONNX file, scored by the engine exactly as training validated."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copyfile(onnx_path, folder / MODEL_FILE)
        m = Manifest.from_dict(json.loads(manifest.to_json()))
        m.model_sha256 = sha256_file(folder / MODEL_FILE)
        m.records_sha256 = None
        (folder / MANIFEST_FILE).write_text(m.to_json(), encoding="utf-8")
        gen = Generator.load(folder, device="cpu")
        return gen.score(val_text, segments=cfg.train.eval_segments).nats_per_token


def _default_max_tokens(records: bool, tok: Tokenizer, val_text: str | None) -> int:
    if not records:
        return 200
    longest = max((len(tok.pieces(r)) for r in (val_text or "").split("\n")), default=30)
    return int(max(16, 2 * longest + 2))


def _versions() -> dict[str, str]:
    import onnxruntime

    return {"lstmgen": lstmgen.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "python": platform.python_version()}
