"""lstmgen: fast, torch-free generation from exported LSTM language models.

    from lstmgen import Generator
    gen = Generator.load("names")          # a shipped model, or a path to an exported folder
    gen.generate(num=10, temperature=0.8, top_k=10, seed=7)

The engine needs only numpy, onnxruntime and numba. Training and export live in lstmgen.trainer
(install the `train` extra); benchmarks in lstmgen.bench.
"""

__version__ = "0.1.0"

from .decoding import Sample, TokenLogprob  # noqa: E402
from .errors import LstmgenError  # noqa: E402
from .generator import Generator  # noqa: E402
from .sampling import SamplingParams  # noqa: E402
from .scoring import Score  # noqa: E402

__all__ = ["Generator", "LstmgenError", "Sample", "SamplingParams", "Score", "TokenLogprob", "__version__"]
