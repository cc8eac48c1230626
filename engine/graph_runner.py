"""Generation through an artifact's generate.onnx: one ONNX Runtime call per request, no Python decode loop.

The same graph runs in Node.js and the browser (js/); this is its Python caller, used by the tests
that hold it equal to `Generator.generate` and by the bench (`run_graph`). Arguments are checked by
`Generator.jobs`, the one place that checks them for every path; settings the graph does not
apply (lstmgen.options' table: `graph_omits()`, the manifest's `generate_omits`) are refused rather
than silently ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .backend import open_session
from .errors import LstmgenError
from .generator import Generator
from .manifest import GENERATE_FILE, PATTERN_INPUTS, graph_problem
from .options import GRAPH, SAMPLING_OPTIONS, refuse_unapplied
from .patterns import TokenAutomaton
from .sampling import SamplingParams


class GraphGenerator:
    """An artifact's generate.onnx in an ONNX Runtime session, with the artifact's tokenizer and checks."""

    def __init__(self, generator: Generator, threads: int | None = None) -> None:
        self.generator = generator
        folder, m = generator.folder, generator.manifest
        path = folder / GENERATE_FILE
        if m.generate_sha256 is None:
            raise LstmgenError(f"{folder} has no {GENERATE_FILE} (exported before it existed); add it with"
                               f" `lstmgen add-graph {folder}` or re-export the model")
        problem = graph_problem(folder, m)
        if problem:
            raise LstmgenError(problem)
        self.session = open_session(path, threads, ["CPUExecutionProvider"],
                                    "rebuild it with `lstmgen add-graph` or re-export the model")

    @classmethod
    def load(cls, name_or_path: str | os.PathLike | None = None, threads: int | None = None) -> "GraphGenerator":
        return cls(Generator.load(name_or_path, device="cpu", threads=threads), threads)

    def generate(self, num: int = 1, prompt: str | None = None, **options) -> list[str]:
        """Like Generator.generate (same seed, same text) for the options the graph applies; the others
        (lstmgen.options' `graph_omits()`) are refused at any value that would change the text."""
        refuse_unapplied(options, GRAPH, GENERATE_FILE)
        [job] = self.generator.jobs(num=num, prompt=prompt, **options)  # the engine's own checks and defaults
        r = job.request
        tokens, lengths = self.run_ids(r.prompt_ids, r.num, r.max_tokens, r.seed, r.params, r.banned, r.pattern,
                                       r.pattern_start)
        decode = self.generator.tokenizer.decode
        skip = 0 if r.echo else len(decode(r.prompt_ids))
        return [decode([*r.prompt_ids, *tokens[i, : lengths[i]]])[skip:] for i in range(r.num)]

    def run_ids(self, prompt_ids: list[int], num: int, max_tokens: int, seed: int, params: SamplingParams,
                banned: list[int], pattern: TokenAutomaton | None = None,
                pattern_start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The graph's raw outputs: tokens [num, max_tokens] (-1 past each row's end) and lengths [num].

        pattern: a compiled pattern (lstmgen.patterns), fed as the graph's pattern_next and pattern_start."""
        # The artifact's own defaults may set what the graph cannot apply: refused as if asked for.
        refuse_unapplied({o.name: getattr(params, o.name) for o in SAMPLING_OPTIONS}, GRAPH, GENERATE_FILE)
        feeds = {"prompt_ids": np.asarray(prompt_ids, np.int64), "num": np.array(num, np.int64),
                 "max_tokens": np.array(max_tokens, np.int64), "seed": np.array(seed, np.int64),
                 "temperature": np.array(params.temperature, np.float64), "top_k": np.array(params.top_k, np.int64),
                 "top_p": np.array(params.top_p, np.float64), "banned_ids": np.asarray(banned, np.int64)}
        if set(PATTERN_INPUTS) <= {i.name for i in self.session.get_inputs()}:
            # No pattern: one state that allows every token (the graph then runs its loop without the pattern).
            table = pattern.next if pattern is not None else np.zeros((1, self.generator.tokenizer.vocab_size), np.int32)
            feeds["pattern_next"] = table
            feeds["pattern_start"] = np.array(pattern_start, np.int64)
        elif pattern is not None:
            raise LstmgenError(f"{self.generator.folder / GENERATE_FILE} was built before patterns (regex, min_length,"
                               f" max_length); rebuild it with `lstmgen add-graph {self.generator.folder}`")
        tokens, lengths = self.session.run(["tokens", "lengths"], feeds)
        return tokens, lengths


def run_graph(folder: str | os.PathLike | Path, num: int, max_tokens: int, seed: int, *,
              threads: int | None = None, **sampling) -> list[str]:
    """One generate.onnx call from a fresh load: the bench's entry point (load once and reuse
    GraphGenerator.generate to keep loading out of a timing)."""
    return GraphGenerator.load(folder, threads).generate(num, max_tokens=max_tokens, seed=seed, **sampling)
