"""lstmgen.trainer: learn an LSTM language model from a corpus with PyTorch and export it to ONNX.

Data path: corpus (lstmgen.corpus) -> tokenizer (lstmgen.tokenizer) -> batches (data) -> model (model)
-> checkpoint (checkpoint) -> export (export) -> artifact read by the engine (lstmgen.generator).
"""
