"""`lstmgen inspect`: surprisal equals the score, states equal PyTorch's, a planted cell is found, the page renders."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from lstmgen import Generator
from lstmgen.cli import main
from lstmgen.inspect import correlate, inspect_text, text_features, top_cells
from lstmgen.manifest import MANIFEST_FILE, MODEL_FILE, Dims, Manifest, sha256_file
from lstmgen.scoring import SCORE_CHUNK

from .conftest import corpus_path, needs_torch, shipped


def _shakespeare_text(chars: int) -> str:
    return corpus_path("tinyshakespeare.txt").read_text()[-chars:]


def _texts() -> dict[str, str]:
    names = corpus_path("names.txt").read_text().split("\n")
    moe = corpus_path("moes_tavern_lines.txt").read_text().split("\n")
    return {"names": "\n".join(names[-120:]) + "\n",
            "shakespeare": _shakespeare_text(1300),  # longer than one score chunk
            "moe": "\n".join(moe[-60:])}


@pytest.fixture(scope="module")
def gens(artifacts):
    return {k: Generator.load(p, device="cpu") for k, p in artifacts.items()}


def test_a_lower_case_vocabulary_reads_capitals_as_score_does(gens):
    g = gens["names"]
    assert g.tokenizer.folds_case
    ins = inspect_text(g, "Emma\nAva\n")
    assert abs(ins.total_nats - g.score("Emma\nAva\n").nats) < 1e-4
    assert abs(ins.total_nats - g.score("emma\nava\n").nats) < 1e-4


@pytest.mark.parametrize("name", ["names", "shakespeare", "moe"])
def test_surprisal_totals_equal_the_score(gens, name):
    g, text = gens[name], _texts()[name]
    if name == "shakespeare":
        text = "".join(ch for ch in text if ch in g.tokenizer.index)  # a tiny model may lack rare characters
    ins = inspect_text(g, text)
    score = g.score(text)
    assert abs(ins.total_nats - score.nats) < 1e-4
    assert ins.tokens_predicted == score.tokens
    n, layers, hidden = len(ins.token_ids), g.manifest.dims.num_layers, g.manifest.dims.hidden_size
    assert ins.h.shape == ins.c.shape == (n, layers, hidden) and len(ins.pieces) == n
    assert np.isfinite(ins.h).all() and np.isfinite(ins.c).all()
    if name != "moe":  # char models show the text itself (a word model shows it lowercased and re-spaced)
        assert "".join(ins.pieces) == text


@pytest.mark.parametrize("name", ["shakespeare-int8", "names-int8"])
def test_int8_artifacts_inspect_and_match_their_score(name):
    g = Generator.load(shipped(name), device="cpu")
    text = _shakespeare_text(700) if name.startswith("shakespeare") else "emma\nolivia\nzyx\n"
    ins = inspect_text(g, text)
    assert abs(ins.total_nats - g.score(text).nats) < 1e-4


@pytest.mark.parametrize("name", ["shakespeare", "shakespeare-int8"])
def test_states_equal_a_token_by_token_run_of_the_step_graph(name):
    """fp32: the two-pass reading (chunks, then all chunks stepped together) gives batch 1's states."""
    g = Generator.load(shipped(name), device="cpu")
    text = _shakespeare_text(SCORE_CHUNK + 90)
    calls = []
    ins = inspect_text(g, text, progress=lambda *call: calls.append(call))
    assert calls[-1][0] == "states" and calls[-1][1] == calls[-1][2] and ("surprisal", 2, 2) in calls
    layers, hidden = g.manifest.dims.num_layers, g.manifest.dims.hidden_size
    h = np.zeros((layers, 1, hidden), np.float32)
    c = np.zeros_like(h)
    for t, token in enumerate(ins.token_ids):
        _, h, c = g.backend.run(np.array([[token]], np.int64), h, c)
        if t in (0, SCORE_CHUNK - 1, SCORE_CHUNK, len(ins.token_ids) - 1):
            np.testing.assert_allclose(ins.h[t], h[:, 0], atol=1e-4)
            np.testing.assert_allclose(ins.c[t], c[:, 0], atol=1e-4)


def _torch_states(onnx_path, sequences):
    """h, c [tokens, layers, hidden] and log-probabilities from a PyTorch LSTM with the artifact's weights."""
    import onnx
    import torch

    from lstmgen.graphs.step import read_step_weights

    sd, layers = read_step_weights(onnx.load(str(onnx_path)))
    vocab, embed = sd["embed.weight"].shape
    hidden = sd["lstm.weight_hh_l0"].shape[1]
    emb, lstm = torch.nn.Embedding(vocab, embed), torch.nn.LSTM(embed, hidden, layers)
    head = torch.nn.Linear(hidden, vocab)
    emb.weight.data = torch.tensor(sd["embed.weight"])
    lstm.load_state_dict({k[len("lstm."):]: torch.tensor(v) for k, v in sd.items() if k.startswith("lstm.")})
    head.weight.data, head.bias.data = torch.tensor(sd["head.weight"]), torch.tensor(sd["head.bias"])
    hs, cs, logp = [], [], []
    with torch.no_grad():
        for seq in sequences:
            state = None
            for token in seq:
                y, state = lstm(emb(torch.tensor([[int(token)]])), state)
                hs.append(state[0][:, 0].numpy().copy())
                cs.append(state[1][:, 0].numpy().copy())
                logp.append(torch.log_softmax(head(y[0, 0]).double(), -1).numpy())
    return np.stack(hs), np.stack(cs), logp


@needs_torch
@pytest.mark.parametrize("name", ["names", "shakespeare", "moe"])
def test_states_equal_a_pytorch_forward_pass(tiny_models, name):
    _, art = tiny_models[name]
    g = Generator.load(art, device="cpu")
    text = {"names": "emma\nava\nzoe\n", "shakespeare": None, "moe": _texts()["moe"][:1500]}[name]
    if text is None:
        text = "".join(ch for ch in _shakespeare_text(SCORE_CHUNK + 60) if ch in g.tokenizer.index)
    ins = inspect_text(g, text)
    if ins.records:
        starts = np.flatnonzero(np.isnan(ins.surprisal))
        sequences = np.split(ins.token_ids, starts[1:])
    else:
        sequences = [ins.token_ids]
    h, c, logp = _torch_states(art / MODEL_FILE, sequences)
    np.testing.assert_allclose(ins.h, h, atol=1e-4)
    np.testing.assert_allclose(ins.c, c, atol=1e-4)
    expected = np.array([np.nan if np.isnan(s) else -logp[t - 1][ins.token_ids[t]] for t, s in enumerate(ins.surprisal)])
    np.testing.assert_allclose(ins.surprisal, expected, atol=1e-4)


# -- a planted cell -------------------------------------------------------------------------------------

QUOTE_UNIT = 3  # layer 0's unit that the hand-set weights make flip at every quote mark


def _quote_tracking_artifact(folder):
    """A char model whose layer-0 unit QUOTE_UNIT holds c = +1 inside double quotes and -1 outside."""
    pytest.importorskip("onnx", reason="building a step graph needs the onnx package (the 'train' extra)")
    import onnx

    from lstmgen.graphs.step import build_step_graph

    vocab = ["\n", " ", '"', "a", "b", "c", "d"]
    quote, V, H, L = vocab.index('"'), len(vocab), 8, 2
    rng = np.random.default_rng(0)
    sd = {"embed.weight": np.eye(V, dtype=np.float32), "head.weight": rng.normal(0, 0.3, (V, H)).astype(np.float32),
          "head.bias": np.zeros(V, np.float32)}
    for layer in range(L):
        width = V if layer == 0 else H
        sd[f"lstm.weight_ih_l{layer}"] = rng.normal(0, 0.8, (4 * H, width)).astype(np.float32)
        sd[f"lstm.weight_hh_l{layer}"] = rng.normal(0, 0.8, (4 * H, H)).astype(np.float32)
        sd[f"lstm.bias_ih_l{layer}"] = rng.normal(0, 0.3, 4 * H).astype(np.float32)
        sd[f"lstm.bias_hh_l{layer}"] = np.zeros(4 * H, np.float32)
    i, f, g, o = (gate * H + QUOTE_UNIT for gate in range(4))  # PyTorch gate order: input, forget, cell, output
    w_ih, w_hh, b = sd["lstm.weight_ih_l0"], sd["lstm.weight_hh_l0"], sd["lstm.bias_ih_l0"]
    for row in (i, f, g, o):
        w_ih[row], w_hh[row] = 0, 0
    w_hh[:, QUOTE_UNIT] = 0  # no other cell reads the planted one, so none inherits its pattern
    sd["lstm.weight_ih_l1"][:, QUOTE_UNIT] = 0
    w_ih[i, quote], b[i] = 20, -10  # write only at a quote mark ...
    w_ih[f, quote], b[f] = -20, 10  # ... forgetting the old value there, keeping it elsewhere
    w_hh[g, QUOTE_UNIT], b[g] = -10, 3  # the value written: + when outside (h < 0 or at the start), - inside
    b[o] = 10
    folder.mkdir()
    onnx.save(build_step_graph(sd, L), folder / MODEL_FILE)
    m = Manifest(tokenizer={"level": "char", "tokens": vocab}, records=False, dims=Dims(V, V, H, L), start_ids=[0],
                 model_sha256=sha256_file(folder / MODEL_FILE), name="quotes")
    (folder / MANIFEST_FILE).write_text(m.to_json())
    return folder


def _quoted_text(rng, lines: int = 30) -> str:
    out = []
    for _ in range(lines):
        words = ["".join(rng.choice(list("abcd"), rng.integers(1, 6))) for _ in range(rng.integers(3, 9))]
        a, b = sorted(rng.choice(len(words) + 1, 2, replace=False))
        out.append(" ".join(words[:a] + ['"' + " ".join(words[a:b]) + '"'] + words[b:]))
    return "\n".join(out) + "\n"


def test_correlation_finds_the_planted_quote_cell(tmp_path):
    art = _quote_tracking_artifact(tmp_path / "quotes")
    ins = inspect_text(Generator.load(art, device="cpu"), _quoted_text(np.random.default_rng(1)))
    features = text_features(ins)
    assert 0.2 < features["in_quotes"].mean() < 0.8
    corr = correlate(ins, features)
    best = top_cells(corr["in_quotes"], 2)
    assert {(cell.layer, cell.unit) for cell, _ in best} == {(0, QUOTE_UNIT)}  # its c and its h, nothing else
    assert all(r > 0.95 for _, r in best)
    others = np.abs(corr["in_quotes"]).copy()
    others[:, 0, QUOTE_UNIT] = 0
    assert others.max() < 0.9


def test_page_lists_the_planted_cell_first(tmp_path, capsys):
    art = _quote_tracking_artifact(tmp_path / "quotes")
    (tmp_path / "t.txt").write_text(_quoted_text(np.random.default_rng(2)))
    assert main(["inspect", str(art), str(tmp_path / "t.txt"), "--out", str(tmp_path / "p.html"), "--top", "3"]) == 0
    page = (tmp_path / "p.html").read_text()
    row = re.search(r"<th>in_quotes</th>.*?</tr>", page).group(0)
    assert re.search(rf"<td><code>[ch]0:{QUOTE_UNIT}</code> \+(0\.9\d|1\.00), <code>[ch]0:{QUOTE_UNIT}</code>", row)
    assert re.search(rf"[ch]0:{QUOTE_UNIT}: best match for in_quotes", page)  # and the text is drawn in its colours


# -- features, the page, the command -------------------------------------------------------------------

def test_features_of_a_word_model_text():
    g = Generator.load(shipped("moe-int8"), device="cpu")
    ins = inspect_text(g, 'moe_szyslak: (quietly) he said "hello there" ok.\nhomer_simpson: no.\n')
    f = text_features(ins)
    words = [p.strip() for p in ins.pieces]
    on = {name: [w for w, v in zip(words, f[name]) if v] for name in ("in_parens", "in_quotes", "after_speaker_tag")}
    assert on == {"in_parens": ["(", "quietly"], "in_quotes": ['"', "hello", "there"],
                  "after_speaker_tag": ["moe_szyslak:", "homer_simpson:"]}
    assert list(f["line_position"][:4]) == [1, 2, 3, 4]
    assert [w for w, v in zip(words, f["line_start"]) if v] == ["", ""]  # the two line breaks


def _page(tmp_path, text: str, *extra: str) -> str:
    (tmp_path / "t.txt").write_text(text)
    out = tmp_path / "page.html"
    assert main(["inspect", "shakespeare", str(tmp_path / "t.txt"), "--out", str(out), *extra]) == 0
    return out


def test_page_is_self_contained_and_shows_the_summary(tmp_path, capsys):
    text = _shakespeare_text(1500)
    out = _page(tmp_path, text, "--cell", "c1:7", "--cell", "h0:0")
    page = out.read_text()
    assert main(["score", "shakespeare", str(tmp_path / "t.txt"), "--json"]) == 0
    printed = capsys.readouterr().out.splitlines()
    score = json.loads(printed[-1])
    assert f"{score['nats_per_token']:.4f} nats/token over {score['tokens']:,} tokens" in printed[0]
    assert f"{score['nats_per_token']:.4f} nats/token, {score['nats']:.2f} nats" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the page must not load anything"
    assert "chosen cell c1:7" in page and "chosen cell h0:0" in page
    assert page.count("<svg") == 2  # one saturation chart per layer


@pytest.mark.parametrize("model,text,expected", [
    ("names-int8", "emma\nolivia\n", "<th>tokens predicted</th><td>12</td>"),  # each name and its end marker
    ("moe-int8", "homer_simpson: my zzyzxq beer.\n", "1 of 6 tokens read as &lt;unk&gt;: zzyzxq"),
    ("moe-int8", "moe_szyslak: </script><!--<script> x\n", r'" \u003c/script>\u003c","!","--"," \u003cscript>"'),
])
def test_pages_of_records_and_word_models(tmp_path, capsys, model, text, expected):
    out = tmp_path / "p.html"
    assert main(["inspect", model, "--text", text, "--out", str(out)]) == 0
    page = out.read_text()
    assert expected in page
    assert page.count("<script") == 2 and page.count("</script>") == 2  # the text cannot break out of the data


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not on PATH (apt install chromium)")
def test_page_renders_in_headless_chromium(tmp_path, capsys):
    text = _shakespeare_text(800)
    out = _page(tmp_path, text, "--cell", "c1:7")
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
                          "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=180,
                         env={**os.environ, "TMPDIR": str(tmp_path)}).stdout
    rendered = re.search(r'id="views" data-rendered="(\d+)"', dom)
    assert rendered, "the page's script did not run"
    ins = inspect_text(Generator.load("shakespeare", device="cpu"), text)
    varying = len(correlate(ins, text_features(ins)))
    assert varying >= 3 and int(rendered.group(1)) == 2 + varying  # surprisal, the chosen cell, one per feature
    assert len(re.findall(r"<span [^>]*data-i=", dom)) == (2 + varying) * len(text)  # every character, every view
    assert re.search(r'<span [^>]*style="background: rgba\(231, 76, 60, 0\.[1-9]', dom)  # surprising tokens are red


@pytest.mark.parametrize("args,message", [
    (["--cell", "c2:0"], "layer 2 is out of range"),
    (["--cell", "h0:512"], "unit 512 is out of range"),
    (["--cell", "x1:3"], "is not LAYER:UNIT"),
])
def test_bad_cells_get_one_line(tmp_path, capsys, args, message):
    (tmp_path / "t.txt").write_text("First Citizen:\nSpeak.\n")
    assert main(["inspect", "shakespeare", str(tmp_path / "t.txt"), "--out", str(tmp_path / "p.html"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("lstmgen: error:")
    assert not (tmp_path / "p.html").exists()


@pytest.mark.parametrize("content,message", [
    (b"", "empty"),
    (b"  \n\n", "empty"),
    (b"\x7fELF\x02\x01\x00\x00binary", "binary"),
    (b"caf\xe9 latin-1", "not UTF-8"),
    ("日本語のテキスト".encode(), "needs at least 2 tokens the model knows (8 outside the model's vocabulary were left out)"),
])
def test_bad_input_gets_one_line(tmp_path, capsys, content, message):
    (tmp_path / "t.txt").write_bytes(content)
    assert main(["inspect", "shakespeare", str(tmp_path / "t.txt"), "--out", str(tmp_path / "p.html")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "p.html").exists()


def test_text_or_file_and_too_short_text(tmp_path, capsys):
    assert main(["inspect", "shakespeare", "--out", str(tmp_path / "p.html")]) == 2
    assert "give a FILE or --text" in capsys.readouterr().err
    assert main(["inspect", "shakespeare", "--text", "a", "--out", str(tmp_path / "p.html")]) == 2
    assert "too short" in capsys.readouterr().err
    assert main(["inspect", "shakespeare", "--text", "a" * 200_001, "--out", str(tmp_path / "p.html")]) == 2
    assert "at most 200,000" in capsys.readouterr().err
    assert main(["inspect", "shakespeare", "--text", "To be, or not", "--out", str(tmp_path / "p.html")]) == 0


def test_characters_outside_the_vocabulary_are_left_out_as_score_does(tmp_path):
    """`lstmgen inspect shakespeare novel.txt` used to refuse '"', '1' and '_'; it reads text as score does."""
    g = Generator.load(shipped("shakespeare"), device="cpu")
    text = 'ROMEO:\n"Say it_1 more," she said.\n'
    ins = inspect_text(g, text)
    score = g.score(text)
    assert ins.oov == score.oov > 0 and ins.tokens_predicted == score.tokens
    assert abs(ins.total_nats - score.nats) < 1e-6
    assert "".join(ins.pieces) == "".join(ch for ch in text if ch in g.tokenizer.index)
    (tmp_path / "novel.txt").write_text(text)
    assert main(["inspect", "shakespeare", str(tmp_path / "novel.txt"), "--out", str(tmp_path / "p.html")]) == 0
