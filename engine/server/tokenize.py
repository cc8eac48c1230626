"""Tokenizer endpoints as vLLM defines them, which lm-evaluation-harness's remote tokenizer reads:

    GET  /tokenizer_info   (?model=NAME)    the tokenizer's configuration: eos_token, bos_token, chat_template...
    POST /tokenize         {model, prompt | messages, add_special_tokens} -> {count, max_model_len, tokens}
    POST /detokenize       {model, tokens} -> {prompt}

each also under /v1/. A request that names no model gets the default model (--default-model), so a
client whose base URL is http://HOST:PORT/v1/completions finds the tokenizer at
http://HOST:PORT/tokenizer_info (lm-eval strips "/v1/completions" from its base_url).

An LSTM's "beginning of sequence" is its start tokens (the manifest's start_ids: '\\n' for running
text, <eos> for records): `add_special_tokens` (vLLM's default, true) puts them first, and a prompt
of token ids that begins with them has the model read them once (lstmgen.generator.Generator.context).
The end-of-record token is written `<eos>`, and that text reads back as the token.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..chat import ChatTemplate
from ..errors import LstmgenError
from ..generator import Generator
from ..tokenizer import EOS, Detokenizer
from .http import read_body
from .served import Models


async def tokenizer_info(request: Request) -> JSONResponse:
    models: Models = request.app.state.models
    name = models.pick(request.query_params.get("model"))
    gen = models.generators[name]
    tok = gen.tokenizer
    return JSONResponse({
        "tokenizer_class": f"lstmgen-{tok.level}", "model": name, "vocab_size": tok.vocab_size,
        "eos_token": EOS if tok.eos_id is not None else None, "bos_token": detokenize(gen, gen.manifest.start_ids),
        "pad_token": None, "unk_token": tok.tokens[tok.unk_id] if tok.unk_id is not None else None,
        "model_max_length": max_model_len(models), "lowercase": tok.folds_case,
        "chat_template": ChatTemplate.for_model(gen.manifest, tok).jinja()})


async def tokenize_endpoint(request: Request) -> JSONResponse:
    models: Models = request.app.state.models
    body = await read_body(request, request.app.state.schemas.tokenize)
    gen = models.generators[models.pick(body.model)]
    if (body.prompt is None) == (body.messages is None):
        raise LstmgenError("give a prompt (text) or messages (a conversation), one of them")
    text = body.prompt if body.prompt is not None else gen.chat_prompt([m.model_dump(exclude_none=True)
                                                                        for m in body.messages])[0]
    ids = tokenize(gen, text, body.add_special_tokens is not False)
    out = {"count": len(ids), "max_model_len": max_model_len(models), "tokens": ids}
    if body.return_token_strs:
        out["token_strs"] = [gen.tokenizer.tokens[i] for i in ids]
    return JSONResponse(out)


async def detokenize_endpoint(request: Request) -> JSONResponse:
    models: Models = request.app.state.models
    body = await read_body(request, request.app.state.schemas.detokenize)
    gen = models.generators[models.pick(body.model)]
    v = gen.tokenizer.vocab_size
    if any(i >= v for i in body.tokens):
        raise LstmgenError(f"tokens must be ids of this model's vocabulary, 0 to {v - 1}")
    return JSONResponse({"prompt": detokenize(gen, body.tokens)})


def tokenize(gen: Generator, text: str, add_special_tokens: bool) -> list[int]:
    """The ids the model reads for a text (case folded as it reads it); `<eos>` in the text is the end of
    record, and with add_special_tokens the start tokens come first."""
    tok = gen.tokenizer
    parts = tok.fold(text).split(EOS) if tok.eos_id is not None else [tok.fold(text)]
    ids: list[int] = []
    for k, part in enumerate(parts):
        if k:
            ids.append(tok.eos_id)
        ids += tok.encode(part) if part else []
    return [*gen.manifest.start_ids, *ids] if add_special_tokens else ids


def detokenize(gen: Generator, ids) -> str:
    """Ids as text, the end of record written `<eos>` so that /tokenize reads it back."""
    detok = Detokenizer(gen.tokenizer)
    return "".join(EOS if i == gen.tokenizer.eos_id else detok.piece(int(i)) for i in ids)


def max_model_len(models: Models) -> int:
    """An LSTM reads any length; the longest prompt this server generates from is --max-prompt-tokens."""
    return models.limits.max_prompt_tokens
