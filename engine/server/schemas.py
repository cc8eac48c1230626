"""The HTTP bodies, declared: pydantic models checked strictly, from which /openapi.json is written.

Why pydantic (v2): its strict mode refuses what the issue tracker found slipping through ("true"
for a boolean, 1.5 for an integer, 5,000-digit numbers, NaN), its JSON parser bounds nesting,
and it writes the JSON Schema that OpenAPI 3.1 embeds, so the document and the checks cannot
disagree. It is already what the OpenAI clients we serve are built on.

Request models are made per server (`Schemas(limits)`): the generation fields come from the table
of lstmgen.options (its names, ranges and help), with the server's caps (max_tokens, n/num) as
their upper bounds. A body that fails its model gets one line in the words of the table:
`max_tokens must be an integer in [1, 2000], got 5000` (`explain`). Response models document what
each endpoint answers; the tests validate real answers against them.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model

from ..decoding import FinishReason
from ..options import BY_NAME, NATIVE, OPENAI, SESSION_OPTIONS, Option, on_surface
from .limits import Limits

STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
NonEmptyText = Annotated[str, StringConstraints(min_length=1)]
TokenIdKey = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,9}$")]
TokenId = Annotated[int, Field(ge=0, lt=2**31)]
MAX_PROMPTS = 256  # prompts in one request
MAX_TOP_CELLS = 5  # /v1/inspect: cells per feature (each sends a value per token)
MAX_CHOSEN_CELLS = 8
MAX_NEXT_TOP = 100  # /v1/next: next tokens listed at most
PATTERN_FIELDS = ("regex", "min_length", "max_length", "ban", "allow_unk")  # what a compiled pattern depends on


# -- one field per option ------------------------------------------------------------------------------
def _bounds(o: Option, high) -> dict:
    if o.low is None:
        return {}
    return {"gt" if o.low_open else "ge": o.low, "lt" if o.high_open else "le": high}


def option_field(o: Option, high=None) -> tuple[Any, Any]:
    """(annotation, Field) of an option as an HTTP field: optional (null or left out = the default)."""
    high = o.high if high is None else high
    doc = f"{o.help}. {o.describe(high)[0].upper()}{o.describe(high)[1:]}."
    if o.kind == "int":
        return Optional[int], Field(None, description=doc, **_bounds(o, high))
    if o.kind == "float":
        return Optional[float], Field(None, description=doc, **_bounds(o, high))
    if o.kind == "bool":
        return Optional[bool], Field(None, description=doc)
    if o.kind == "texts":
        return Union[NonEmptyText, Annotated[list[NonEmptyText], Field(max_length=int(high))], None], Field(None, description=doc)
    if o.kind == "text":
        return Optional[Annotated[str, StringConstraints(min_length=1, max_length=int(high))]], Field(None, description=doc)
    value = Annotated[float, Field(ge=o.low, le=high)]
    key = NonEmptyText if o.kind == "text_map" else TokenIdKey
    return Optional[dict[key, value]], Field(None, description=doc)


def _model_field(served: list[str]) -> tuple[Any, Any]:
    # Any text passes the model's check; one not served is a 404 (as OpenAI answers), so the schema's
    # enum says what is served without turning a wrong name into a 400.
    return Optional[str], Field(None, description="which served model; may be left out when one model is served",
                                json_schema_extra={"enum": [*served, None]})


def _option_fields(surface: str, caps: dict, *, rename: bool = False) -> dict:
    return {(o.openai_name or o.name) if rename else o.name: option_field(o, caps.get(o.name))
            for o in on_surface(surface)}


# -- requests -------------------------------------------------------------------------------------------
class ScoreRequest(BaseModel):
    model_config = STRICT
    model: Optional[str] = Field(None, description="which served model; may be left out when one model is served")
    text: str = Field(description="the text to score (records models: one item a line)")
    records: Optional[bool] = Field(None, description="score as records (default: what the model was trained on)")
    segments: Optional[int] = Field(None, ge=1, le=1024, description="running text: contiguous segments, each from"
                                    " a fresh state (default 1)")
    streams: Optional[int] = Field(None, ge=1, le=1024, description="the old name of `segments`")


class InspectRequest(BaseModel):
    model_config = STRICT
    model: Optional[str] = Field(None, description="which served model; may be left out when one model is served")
    text: str = Field(description="the text to read")
    top: Optional[int] = Field(None, ge=1, le=MAX_TOP_CELLS, description="cells listed per feature (default 3)")
    cells: Optional[list[Annotated[str, StringConstraints(pattern=r"^[ch]?[0-9]{1,4}:[0-9]{1,6}$")]]] = Field(
        None, max_length=MAX_CHOSEN_CELLS, description="cells to report too, [c|h]LAYER:UNIT (e.g. c1:37)")


class ChatMessage(BaseModel):
    model_config = STRICT
    role: Literal["system", "user", "assistant"]
    content: Union[str, list["ContentPart"]] = Field(description="text, or OpenAI's content parts (text only)")
    name: Optional[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_ .-]{1,64}:?$")]] = Field(
        None, description="the speaker: on a script model, the speaker tag this message is written under")

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def as_message(self) -> dict:
        return {"role": self.role, "content": self.text(), **({"name": self.name} if self.name else {})}


class ContentPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: str


class TokenizeRequest(BaseModel):
    model_config = STRICT
    model: Optional[str] = None
    prompt: Optional[str] = Field(None, description="the text to tokenize")
    messages: Optional[Annotated[list[ChatMessage], Field(min_length=1)]] = Field(
        None, description="a conversation, tokenized as the model's chat template writes it")
    add_special_tokens: Optional[bool] = Field(None, description="put the model's start tokens first (default true)")
    add_generation_prompt: Optional[bool] = Field(None, description="accepted for vLLM's clients; a conversation"
                                                  " always ends with the opening of the reply")
    return_token_strs: Optional[bool] = None


class DetokenizeRequest(BaseModel):
    model_config = STRICT
    model: Optional[str] = None
    tokens: list[TokenId]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: Optional[list[str]] = None


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    tokenizer_class: str
    eos_token: Optional[str]
    bos_token: Optional[str]
    chat_template: str


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: Optional[bool] = None


class Schemas:
    """The request models of one server, with its limits as the caps of the generation options."""

    def __init__(self, limits: Limits, served: list[str]) -> None:
        caps = limits.caps
        self.generate = create_model(
            "GenerateRequest", __config__=STRICT, model=_model_field(served),
            prompt=(Optional[str], Field(None, description="the text every sample starts with")),
            prompts=(Optional[Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]],
                     Field(None, description="several prompts: `num` samples each")),
            stream=(Optional[bool], Field(None, description="Server-Sent Events of one sample's text as it is written")),
            **_option_fields(NATIVE, caps))
        self.completion = create_model(
            "CompletionRequest", __config__=STRICT, model=_model_field(served),
            prompt=(Union[str, Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)],
                          Annotated[list[TokenId], Field(min_length=1)],
                          Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=MAX_PROMPTS)],
                          None],
                    Field(None, description="a text, a list of texts, token ids, or a list of lists of token ids (no list empty)")),
            stream=(Optional[bool], Field(None)), stream_options=(Optional[StreamOptions], Field(None)),
            user=(Optional[str], Field(None, description="ignored")),
            suffix=(Optional[Literal[""]], Field(None, description="not supported: null or left out")),
            best_of=(Optional[Literal[1]], Field(None, description="not supported: 1 or left out")),
            **_option_fields(OPENAI, caps, rename=True))
        chat_options = {k: v for k, v in _option_fields(OPENAI, caps, rename=True).items() if k not in ("echo", "logprobs")}
        self.chat = create_model(
            "ChatCompletionRequest", __config__=STRICT, model=_model_field(served),
            messages=(Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_PROMPTS)], Field(
                description="the conversation; the model's chat template (lstmgen.chat) makes it a prompt")),
            stream=(Optional[bool], Field(None)), stream_options=(Optional[StreamOptions], Field(None)),
            user=(Optional[str], Field(None, description="ignored")),
            logprobs=(Optional[bool], Field(None, description="each reply token's log-probability")),
            top_logprobs=(Optional[int], Field(None, ge=0, le=int(BY_NAME["logprobs"].high),
                                               description="alternatives listed per token (with logprobs)")),
            max_completion_tokens=option_field(BY_NAME["max_tokens"], caps.get("max_tokens")),
            speakers=(Optional[dict[Literal["system", "user", "assistant"], NonEmptyText]], Field(
                None, description="script models: the speaker tag of each role, e.g. {\"user\": \"bart_simpson:\"}")),
            **chat_options)
        model = _model_field(served)
        self.next = create_model(
            "NextRequest", __config__=STRICT, model=_model_field(served),
            text=(Optional[str], Field(None, description="the text so far (a records model: a record's beginning);"
                                       " empty or left out: the model's first token")),
            top=(Optional[int], Field(None, ge=1, le=MAX_NEXT_TOP, description="how many of the likeliest next"
                                      " tokens to list (default 5)")),
            **{o.name: option_field(o, caps.get(o.name)) for o in on_surface(NATIVE)
               if o.name in SESSION_OPTIONS and o.name != "seed"})
        self.tokenize = create_model("TokenizeRequest", __base__=TokenizeRequest, model=model)
        self.detokenize = create_model("DetokenizeRequest", __base__=DetokenizeRequest, model=model)
        self.pattern = create_model("PatternRequest", __config__=STRICT, model=_model_field(served),
                                    **{name: option_field(BY_NAME[name]) for name in PATTERN_FIELDS})
        self.score = create_model("ScoreRequest", __base__=ScoreRequest, model=model)
        self.inspect = create_model("InspectRequest", __base__=InspectRequest, model=model)
        self.served = served


# -- one line for a body that fails its model --------------------------------------------------------------
def explain(error: ValidationError, model: type[BaseModel], caps: dict) -> tuple[str, str | None]:
    """(message, the field as the caller wrote it) for the first problem of a body."""
    e = error.errors(include_url=False)[0]
    kind, loc = e["type"], e["loc"]
    if kind == "json_invalid":
        return f"body is not valid JSON ({e['msg'].removeprefix('Invalid JSON: ')})", None
    if not loc:
        return "body must be a JSON object", None
    field = str(loc[0])
    if kind == "extra_forbidden":
        known = ", ".join(sorted(model.model_fields))
        return f"unknown field {field!r} (known: {known})", field
    if kind == "missing":
        return f"{field} is required", field
    option = BY_NAME.get(_option_name(field))
    if option is not None:
        return option.bad(_AsJson(e["input"]), caps.get(option.name)).spelled(field), field
    info = model.model_fields.get(field)
    if len(loc) > 1 and _is_type_tag(loc[1]) and info is not None and info.description:
        # a union (prompt: text, texts, token ids...): pydantic reports its first member; say what any may be
        return f"{field} must be {info.description}, got {_short(e['input'])}", field
    where = ".".join(str(x) for x in loc if not _is_type_tag(x))
    return f"{where}: {e['msg'][0].lower()}{e['msg'][1:]}, got {_short(e['input'])}", field


def _option_name(field: str) -> str:
    return next((o.name for o in BY_NAME.values() if o.openai_name == field), field)


def _is_type_tag(part) -> bool:
    # pydantic names the union member it tried ('str', 'list[constrained-str]'); the caller wrote none of them
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "constrained-str"))


def _short(value) -> str:
    """The value as the caller wrote it (JSON: true, null), cut to 60 characters."""
    text = repr(_AsJson(value))
    return text if len(text) <= 60 else text[:57] + "..."


class _AsJson:
    """A request's value that an option's message shows as JSON (true, not Python's True)."""

    def __init__(self, value) -> None:
        self.value = value

    def __repr__(self) -> str:
        return json.dumps(self.value, ensure_ascii=False, default=str)


# -- responses --------------------------------------------------------------------------------------------
class NativeError(BaseModel):
    error: str = Field(description="one line: what is wrong and how to fix it")
    param: Optional[str] = Field(None, description="the request's field at fault, as the caller wrote it (when one is)")


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = Field(description="the request field at fault, as the caller wrote it")
    code: Optional[str]


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


class Health(BaseModel):
    status: Literal["ok"]
    models: list[str]


class ModelDetails(BaseModel):
    level: Literal["char", "word"]
    records: bool
    precision: Literal["fp32", "int8"]
    dims: dict[str, int]
    defaults: dict[str, float]


class ModelObject(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    lstmgen: ModelDetails


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelObject]


class TopToken(BaseModel):
    token: str
    logprob: float


class TokenLogprobOut(BaseModel):
    token: str
    id: int
    logprob: float = Field(description="under the model's own distribution (temperature 1, nothing filtered)")
    top: list[TopToken]
    constrained_logprob: Optional[float] = Field(None, description="with a pattern: under the model's distribution"
                                                 " restricted to the tokens the pattern allowed, renormalised")


FinishReasonOut = Literal[FinishReason.ALL]


class SampleOut(BaseModel):
    text: str
    finish_reason: FinishReasonOut
    prompt_tokens: int
    completion_tokens: int
    pattern_accepted: Optional[bool] = Field(None, description="with a pattern: whether it accepted what was written"
                                             " (false: cut at max_tokens before it matched)")
    logprobs: Optional[list[TokenLogprobOut]] = None
    total_logprob: Optional[float] = None


class Usage(BaseModel):
    prompt_tokens: int = Field(description="the prompts' tokens as the model read them, each prompt counted once")
    completion_tokens: int = Field(description="tokens the model wrote, a record's end marker included")
    total_tokens: int


class GenerateResponse(BaseModel):
    model: str
    seed: int
    samples: Union[list[Union[str, SampleOut]], list[list[Union[str, SampleOut]]]] = Field(
        description="texts (objects with `logprobs`); one list per prompt with `prompts`")
    finish_reasons: Union[list[FinishReasonOut], list[list[FinishReasonOut]]]
    usage: Usage


class NextTokenOut(BaseModel):
    token: str = Field(description="the vocabulary entry (<eos>: the record ends here)")
    id: int
    text: str = Field(description="what appending it writes after the text (a word model's space included)")
    probability: float = Field(description="the chance that generation with these options writes it next")


class NextResponse(BaseModel):
    model: str
    text: str = Field(description="the text as the model read it (case folded, words re-spaced)")
    prompt_tokens: int = Field(description="the text's tokens")
    cached_tokens: int = Field(description="tokens read from the prefix-state cache instead of the model")
    top: list[NextTokenOut] = Field(description="likeliest first; only tokens generation can write")


class ScoreResponse(BaseModel):
    nats: float
    tokens: int
    chars: int
    oov: int
    case_folded: bool
    oov_scored: bool
    nats_per_token: float
    perplexity: float
    bits_per_char: float
    oov_rate: float


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[Optional[float]]
    top_logprobs: list[Optional[dict[str, float]]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: Optional[CompletionLogprobs]
    finish_reason: Optional[Literal["stop", "length"]]


class ChatTokenLogprob(BaseModel):
    token: str
    logprob: Optional[float]
    bytes: list[int]
    top_logprobs: list[dict[str, Union[str, float, list[int]]]]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class ChatReply(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatReply
    logprobs: Optional[ChatLogprobs]
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Optional[Usage] = None


class FeatureCells(BaseModel):
    help: str
    top: list[dict[str, Union[str, float]]]


class InspectResponse(BaseModel):
    model: str
    level: Literal["char", "word"]
    records: bool
    pieces: list[str]
    surprisal: list[Optional[float]]
    nats: float
    tokens_predicted: int
    nats_per_token: float
    oov: int
    features: dict[str, FeatureCells]
    activations: dict[str, list[float]]


RESPONSES = (NativeError, OpenAIError, Health, ModelList, ModelObject, GenerateResponse, ScoreResponse, Completion,
             InspectResponse, NextResponse)
