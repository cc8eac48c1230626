// lstmgen for JavaScript: generate text from an lstmgen artifact with ONNX Runtime.
//
// `generate`: the whole generation (prefill, decode loop, sampling, random numbers) is inside
// generate.onnx, so this module only checks the request, encodes the prompt, makes one session.run
// call and decodes the tokens: the same seed and settings give the same text as `lstmgen generate`.
// `session`: step-by-step generation over model.onnx, one model run per call, with the Python
// engine's sampler ported (session.mjs): the same text as Python's lstmgen Session.
// It takes the runtime as an argument (onnxruntime-node or onnxruntime-web), so it runs in both;
// node.mjs and web.mjs load an artifact folder for each.

import { GREEDY_BELOW, OPTIONS } from "./options.mjs";
import { Session } from "./session.mjs";

export { OPTIONS, Session };

export const GENERATE_FILE = "generate.onnx"; // for onnxruntime-node (and every native ONNX Runtime)
export const GENERATE_WEB_FILE = "generate-web.onnx"; // the same graph in the layout onnxruntime-web loads
const DIGEST_KEYS = { [GENERATE_FILE]: "generate_sha256", [GENERATE_WEB_FILE]: "generate_web_sha256" };
export const MODEL_FILE = "model.onnx";
export const MANIFEST_FILE = "manifest.json";
const SEED_LIMIT = 2n ** 63n;
const PUNCT_NO_SPACE_BEFORE = new Set([".", ",", "!", "?", ";", ")", "--"]);
// engine/tokenizer.py's _WORD_RE: words, punctuation, '--' and line breaks as separate tokens
const WORD_RE = /\n|--|[.,!?;"()]|[^\s.,!?;"()-]+(?:-[^\s.,!?;"()-]+)*|-/gu;

/** An error in the caller's input or the artifact: its message is one line saying what to fix. */
export class LstmgenError extends Error {
  constructor(message) {
    super(message);
    this.name = "LstmgenError";
  }
}

/** Hex sha256 of bytes (WebCrypto: in Node 20 and in browsers on http://localhost or https). */
export async function sha256Hex(bytes) {
  const digest = await globalThis.crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** model.onnx's bytes checked against the manifest's sha256 (a Session runs it); `where` names the folder. */
export async function checkModel(manifest, modelBytes, where) {
  if (!modelBytes) throw new LstmgenError(`${where} has no ${MODEL_FILE} (the artifact is incomplete; re-export it)`);
  if ((await sha256Hex(modelBytes)) !== manifest.model_sha256) {
    throw new LstmgenError(`${where}/${MODEL_FILE} does not match the sha256 in its manifest (truncated, replaced or corrupt);`
      + " re-export it");
  }
}

/** Check a parsed manifest.json and the sha256 of the graph file `graphFile`; `where` names the folder in messages. */
export async function checkArtifact(manifest, graphBytes, where, graphFile) {
  if (!manifest || manifest.format !== "lstmgen-artifact") {
    throw new LstmgenError(`${where}/${MANIFEST_FILE} is not an lstmgen artifact manifest`);
  }
  const digest = manifest[DIGEST_KEYS[graphFile]];
  if (!digest || !graphBytes) {
    throw new LstmgenError(`${where} has no ${graphFile} (exported before it existed); re-export it, or run`
      + ` \`lstmgen add-graph ${where}\``);
  }
  if ((await sha256Hex(graphBytes)) !== digest) {
    throw new LstmgenError(`${where}/${graphFile} does not match the sha256 in its manifest (truncated, replaced`
      + " or corrupt); rebuild it with `lstmgen add-graph` or re-export the model");
  }
}

/** Text <-> ids with the rules of engine/tokenizer.py (char and word levels). */
export class Tokenizer {
  constructor(spec) {
    this.level = spec.level;
    this.tokens = spec.tokens;
    this.lowercase = Boolean(spec.lowercase);
    this.eosId = spec.eos_id ?? null;
    this.unkId = spec.unk_id ?? null;
    this.index = new Map(this.tokens.map((t, i) => [t, i]));
  }

  /** True when the vocabulary is lower case only: text is folded before lookup (Tokenizer.folds_case). */
  get foldsCase() {
    if (this.level === "word") return this.lowercase;
    const letters = this.tokens.filter((t) => Array.from(t).length === 1 && /\p{L}/u.test(t));
    return letters.length > 0 && !letters.some((t) => t !== t.toLowerCase() && t === t.toUpperCase());
  }

  fold(text) {
    return this.foldsCase ? text.toLowerCase() : text;
  }

  pieces(text) {
    if (this.level === "char") return Array.from(text); // code points, as Python iterates a str
    let t = text.replaceAll("\r\n", "\n");
    if (this.lowercase) t = t.toLowerCase();
    return t.match(WORD_RE) ?? [];
  }

  encode(text) {
    const pieces = this.pieces(text);
    if (this.level === "word") return pieces.map((p) => this.index.get(p) ?? this.unkId);
    const missing = [...new Set(pieces.filter((p) => !this.index.has(p)))].sort();
    if (missing.length) {
      const shown = missing.slice(0, 10).map((c) => JSON.stringify(c)).join(", ");
      throw new LstmgenError(`text has characters the model's vocabulary lacks: ${shown} (remove or replace them)`);
    }
    return pieces.map((p) => this.index.get(p));
  }

  decode(ids) {
    const d = new Detokenizer(this);
    return ids.map((id) => d.piece(id)).join("");
  }
}

/** engine/tokenizer.py's Detokenizer: re-attaches punctuation and restores line breaks. */
export class Detokenizer {
  constructor(tokenizer) {
    this.tok = tokenizer;
    this.lineStart = true;
    this.glueNext = false; // after '(' or an opening quote the next word attaches
    this.quoteOpen = false;
    this.prevDash = false;
  }

  piece(id) {
    const t = this.tok.tokens[id];
    if (id === this.tok.eosId) return "";
    if (this.tok.level === "char") return t;
    if (t === "\n") {
      this.lineStart = true;
      this.glueNext = this.quoteOpen = this.prevDash = false;
      return "\n";
    }
    const space = this.lineStart || this.glueNext ? "" : " ";
    this.lineStart = this.glueNext = false;
    const afterDash = this.prevDash;
    this.prevDash = t === "-";
    if (PUNCT_NO_SPACE_BEFORE.has(t)) return t === "--" && afterDash ? space + t : t;
    if (t === "(") {
      this.glueNext = true;
      return space + t;
    }
    if (t === '"') {
      this.quoteOpen = !this.quoteOpen;
      if (this.quoteOpen) {
        this.glueNext = true;
        return space + t;
      }
      return t;
    }
    return space + t;
  }

  /** A copy that goes on from the same point (what a token would write, without writing it). */
  copy() {
    return Object.assign(Object.create(Detokenizer.prototype), this);
  }
}

function isFiniteNumber(x) {
  return typeof x === "number" && Number.isFinite(x);
}

// The options' kinds, ranges and help come from Python's table (lstmgen.options), written out as
// options.mjs; a call is checked with the same rules and words, naming options as JS callers write them.
const BY_JS_NAME = new Map(OPTIONS.map((o) => [o.js, o]));
const NOT_OPTIONS = new Set(["prompt", "pattern"]);

function inRange(o, x) {
  const above = o.lowOpen ? x > o.low : x >= o.low;
  const below = o.highOpen ? x < o.high : x <= o.high;
  return above && below;
}

function validValue(o, v) {
  switch (o.kind) {
    case "int": return (Number.isInteger(v) || typeof v === "bigint") && inRange(o, Number(v));
    case "float": return isFiniteNumber(v) && inRange(o, v);
    case "bool": return v === true || v === false;
    case "texts": {
      const items = typeof v === "string" ? [v] : v;
      return Array.isArray(items) && items.length <= o.high && items.every((t) => typeof t === "string" && t !== "");
    }
    case "text_map": return mapOf(v, (k) => k !== "", o);
    case "id_map": return mapOf(v, (k) => /^[0-9]{1,9}$/.test(k), o);
    default: return false;
  }
}

function mapOf(v, keyOk, o) {
  if (v === null || typeof v !== "object" || Array.isArray(v)) return false;
  return Object.entries(v).every(([k, x]) => keyOk(k) && isFiniteNumber(x) && x >= o.low && x <= o.high);
}

function shown(v) {
  return typeof v === "string" || (typeof v === "object" && v !== null) ? JSON.stringify(v) : String(v);
}

// Which options each JavaScript runtime applies (the table's `runtimes`): generate.onnx's, and the
// step-by-step Session's (model.onnx and session.mjs's sampler), which takes only what decides each
// next token (the table's session options), as Python's Session does.
const RUNTIMES = {
  generate: { applies: (o) => o.js_applies, where: GENERATE_FILE, takes: () => true, extra: new Set(["prompt", "pattern"]) },
  session: { applies: (o) => o.sessionApplies, where: "a JavaScript session", takes: (o) => o.session,
             extra: new Set(["prompt", "state", "row"]) },
};

/** The options of one call checked against the table: {python_name: value}, defaults filled in. */
export function checkOptions(opts, defaults, runtime = "generate") {
  const rt = RUNTIMES[runtime];
  const unknown = Object.keys(opts).filter((k) => !BY_JS_NAME.has(k) && !rt.extra.has(k));
  if (unknown.length) {  // listed with what this runtime takes; a miscased name (topk) gets its spelling
    const known = [...rt.extra, ...OPTIONS.filter((o) => rt.takes(o) && rt.applies(o)).map((o) => o.js)].sort();
    const meant = unknown.map((k) => known.find((n) => n.toLowerCase() === k.toLowerCase().replaceAll("_", "")))
      .filter(Boolean);
    throw new LstmgenError(`unknown option(s) ${unknown.join(", ")}${meant.length ? ` (did you mean ${meant.join(", ")}?)` : ""}`
      + ` (known: ${known.join(", ")})`);
  }
  const shaping = OPTIONS.filter((o) => !rt.takes(o) && opts[o.js] !== undefined && opts[o.js] !== null).map((o) => o.js);
  if (shaping.length) {
    throw new LstmgenError(`a session draws one token at a time: leave out ${shaping.join(", ")} (they shape a whole`
      + " generation; use generate)");
  }
  const out = {};
  for (const o of OPTIONS.filter(rt.takes)) {
    const v = opts[o.js];
    if (v === undefined || v === null) {
      out[o.name] = o.manifest ? defaults[o.name] : o.off ?? undefined;
      continue;
    }
    if (o.jsInstead) {
      throw new LstmgenError(`${o.js} is compiled in Python: write the tables with \`lstmgen compile-pattern MODEL`
        + ` --${o.name.replaceAll("_", "-")} ...\` (or POST /v1/pattern to \`lstmgen serve\`) and pass them as`
        + ` ${o.jsInstead}`);
    }
    if (!rt.applies(o)) {
      const isOff = Array.isArray(o.off) ? Array.isArray(v) && v.length === 0 : v === o.off;
      if (o.dependsOn === null && (o.always || !isOff)) {
        throw new LstmgenError(`${rt.where} does not apply ${o.js}; leave it out or generate with the Python engine`);
      }
      continue;
    }
    if (!validValue(o, v)) throw new LstmgenError(`${o.js} must be ${o.describe}, got ${shown(v)}`);
    out[o.name] = o.kind === "texts" && typeof v === "string" ? [v] : v;
  }
  if (out.temperature < GREEDY_BELOW) out.temperature = 0; // 1/T would overflow: tiny temperatures are greedy
  return out;
}

export function checkSeed(seed) {
  let s;
  try {
    s = BigInt(seed);
  } catch {
    throw new LstmgenError(`seed must be an integer in [0, 2^63), got ${seed}`);
  }
  if (s < 0n || s >= SEED_LIMIT || (typeof seed === "number" && !Number.isSafeInteger(seed))) {
    throw new LstmgenError(`seed must be an integer in [0, 2^63), got ${seed}`);
  }
  return s;
}

export function randomSeed() {
  return BigInt(globalThis.crypto.getRandomValues(new Uint32Array(1))[0]);
}

/**
 * A compiled pattern (regex, min/max length) as `lstmgen compile-pattern` writes it (engine/patterns.py's
 * TokenAutomaton.to_dict): `next` is the state after each token, -1 where the pattern does not allow it.
 */
export class Pattern {
  constructor(spec) {
    if (!spec || spec.format !== "lstmgen-pattern" || spec.version !== 1) {
      throw new LstmgenError("pattern must be what `lstmgen compile-pattern` writes (format lstmgen-pattern, version 1)");
    }
    this.spec = spec;
    this.states = spec.states;
    this.vocabSize = spec.vocab_size;
    this.next = new Int32Array(spec.states * spec.vocab_size).fill(-1);
    const t = spec.transitions;
    for (let i = 0; i < t.length; i += 3) this.next[t[i] * this.vocabSize + t[i + 1]] = t[i + 2];
  }

  /** The state rows start in after the prompt (as engine/patterns.py's TokenAutomaton.start). */
  start(promptIds, maxTokens) {
    const s = this.spec;
    let state;
    if (s.records) {
      state = s.start_by_mode[0];
      for (const id of promptIds) state = state >= 0 ? this.next[state * this.vocabSize + id] : -1;
      if (state < 0) throw new LstmgenError("the prompt cannot begin a record that matches the pattern; change the prompt or the pattern");
    } else {
      let mode = 0;
      for (const id of promptIds) mode = s.mode_next[mode][id];
      state = s.start_by_mode[mode];
      if (state < 0) {
        throw new LstmgenError("the pattern cannot match what this model writes after this prompt (a word model writes a"
          + " space before its next word: begin the pattern with one)");
      }
    }
    if (s.min_tokens[state] > maxTokens) {
      throw new LstmgenError(`maxTokens is ${maxTokens}, but the shortest sample that matches the pattern takes`
        + ` ${s.min_tokens[state]} tokens; raise maxTokens`);
    }
    return state;
  }
}

/** sha256 of the vocabulary as compact JSON: what a pattern file is tied to (engine/patterns.py's vocabulary_digest). */
async function vocabularyDigest(tokens) {
  return sha256Hex(new TextEncoder().encode(JSON.stringify(tokens)));
}

/**
 * A loaded artifact: `generate` runs generate.onnx once and returns the texts; `session` starts (or
 * restores) a step-by-step Session over model.onnx. `openModel` opens model.onnx's ONNX Runtime session
 * when a Session first needs it (the loaders check its sha256 against the manifest).
 */
/**
 * model.onnx's state tensors, as engine/manifest.py's IONames.state_tensors names them: per layer (format 2)
 * layer l's h is h0_<l> in and h1_<l> out; stacked (format 1, whose manifests have no io.state) h0 and h1
 * hold every layer. Each: { nameIn, nameOut, kind: "h" | "c", first layer, count of layers }.
 */
export function stateTensors(io, numLayers) {
  if ((io.state ?? "stacked") === "stacked") {
    return ["h", "c"].map((kind) => ({ nameIn: io[`${kind}0`], nameOut: io[`${kind}1`], kind, first: 0, count: numLayers }));
  }
  const out = [];
  for (let layer = 0; layer < numLayers; layer++) {
    for (const kind of ["h", "c"]) out.push({ nameIn: `${io[`${kind}0`]}_${layer}`, nameOut: `${io[`${kind}1`]}_${layer}`, kind, first: layer, count: 1 });
  }
  return out;
}

export class Generator {
  constructor(ort, session, manifest, openModel = null) {
    this.ort = ort;
    this.graph = session;
    this.manifest = manifest;
    this.tokenizer = new Tokenizer(manifest.tokenizer);
    this.openModel = openModel;
    this.model = null;
  }

  get records() {
    return this.manifest.records;
  }

  encodePrompt(prompt) {
    if (!prompt) return [];
    if (this.records && prompt.includes("\n")) {
      throw new LstmgenError("a prompt for a records model must be one line (a record's beginning)");
    }
    const ids = this.tokenizer.encode(this.tokenizer.fold(prompt)); // a lower-case-only model reads 'Ma' as 'ma'
    if (this.tokenizer.eosId !== null && ids.includes(this.tokenizer.eosId)) {
      throw new LstmgenError("the prompt contains the end-of-record token text; remove it");
    }
    return ids;
  }

  /** Ids never sampled: <unk> unless allowUnk, and the tokens of `ban` (given as text, as in Python). */
  bannedIds(allowUnk, ban) {
    const unk = this.tokenizer.unkId;
    const ids = new Set(allowUnk || unk === null ? [] : [unk]);
    for (const text of ban) ids.add(this.tokenId(text));
    return [...ids].sort((a, b) => a - b);
  }

  /** The pattern's feeds: none for a graph built before patterns, the all-allowing automaton when there is no pattern. */
  async patternFeedsOf(pattern, promptIds, maxTokens, banned) {
    if (!this.graph.inputNames.includes("pattern_next")) {
      if (!pattern) return {};
      throw new LstmgenError("this generate.onnx was built before patterns (regex, min_length, max_length); rebuild it"
        + " with `lstmgen add-graph FOLDER`");
    }
    if (pattern) return this.patternFeeds(pattern, promptIds, maxTokens, banned);
    const V = this.tokenizer.tokens.length;
    return { pattern_next: new this.ort.Tensor("int32", new Int32Array(V), [1, V]),
             pattern_start: new this.ort.Tensor("int64", BigInt64Array.from([0n]), []) };
  }

  /** The feeds of a compiled pattern (`pattern`: a Pattern or the parsed JSON of `lstmgen compile-pattern`). */
  async patternFeeds(pattern, promptIds, maxTokens, banned) {
    const p = pattern instanceof Pattern ? pattern : new Pattern(pattern);
    this.digest ??= await vocabularyDigest(this.tokenizer.tokens);
    if (p.spec.vocab_sha256 !== this.digest || p.vocabSize !== this.tokenizer.tokens.length) {
      throw new LstmgenError("pattern was compiled for another vocabulary; compile it for this model with `lstmgen compile-pattern`");
    }
    if (p.spec.records !== Boolean(this.records)) throw new LstmgenError("pattern was compiled for another kind of model (records or running text)");
    if (JSON.stringify(p.spec.banned) !== JSON.stringify(banned)) {
      const shown = (ids) => `[${ids.map((i) => JSON.stringify(this.tokenizer.tokens[i])).join(", ")}]`;
      throw new LstmgenError(`pattern was compiled with banned tokens ${shown(p.spec.banned)} but this call bans`
        + ` ${shown(banned)}; compile it with the same --ban and --allow-unk`);
    }
    const T = this.ort.Tensor;
    return {
      pattern_next: new T("int32", p.next, [p.states, p.vocabSize]),
      pattern_start: new T("int64", BigInt64Array.from([BigInt(p.start(promptIds, maxTokens))]), []),
    };
  }

  /** The id of one vocabulary token given as text (Generator.token_id). */
  tokenId(text) {
    let id = this.tokenizer.index.get(text);
    if (id === undefined && this.tokenizer.lowercase) id = this.tokenizer.index.get(text.toLowerCase());
    if (id === undefined) throw new LstmgenError(`${JSON.stringify(text)} is not a token of this model's vocabulary`);
    return id;
  }

  /** {text: value} and {id: value} -> [[id, value added to its logit], ...] (Generator.bias_ids). */
  biasIds(bias, logitBias) {
    const out = new Map();
    for (const [text, v] of Object.entries(bias ?? {})) out.set(this.tokenId(text), v);
    const V = this.tokenizer.tokens.length;
    for (const [key, v] of Object.entries(logitBias ?? {})) {
      const id = Number(key);
      if (id >= V) throw new LstmgenError(`logitBias names token ${key}, outside this model's vocabulary (ids 0 to ${V - 1})`);
      out.set(id, (out.get(id) ?? 0) + v);
    }
    return [...out.entries()];
  }

  /** model.onnx over ids [T] from a state (null: zeros): {logits of the last position, h, c} (float32). */
  async runModel(ids, h = null, c = null) {
    if (this.model === null) {
      if (this.openModel === null) throw new LstmgenError("this Generator was made without model.onnx; load it with node.mjs or web.mjs");
      this.model = await this.openModel();
    }
    const { num_layers: L, hidden_size: H, vocab_size: V } = this.manifest.dims;
    const io = this.manifest.io;
    const T = this.ort.Tensor;
    const state = { h: h ?? new Float32Array(L * H), c: c ?? new Float32Array(L * H) };  // [L, 1, H] each
    const tensors = stateTensors(io, L);
    const feeds = { [io.tokens]: new T("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]) };
    for (const { nameIn, kind, first, count } of tensors) {
      feeds[nameIn] = new T("float32", state[kind].slice(first * H, (first + count) * H), [count, 1, H]);
    }
    const out = await this.model.run(feeds);
    const after = { h: new Float32Array(L * H), c: new Float32Array(L * H) };
    for (const { nameOut, kind, first } of tensors) after[kind].set(out[nameOut].data, first * H);
    const logits = out[io.logits].data;
    return { logits: logits.slice(logits.length - V), h: after.h, c: after.c };
  }

  /**
   * A step-by-step Session that has read the prompt (session.mjs): top(k), append(text), sample(), text,
   * save(). Options: prompt, seed, row, and the table's session options in camelCase (temperature, topK,
   * topP, minP, repetitionPenalty, repetitionWindow, frequencyPenalty, presencePenalty, allowUnk, ban,
   * bias, logitBias). With `state` (bytes from save(), here or in Python) it continues from there.
   */
  async session(opts = {}) {
    if (opts.state !== undefined) {
      if (Object.keys(opts).length > 1) throw new LstmgenError("a saved state holds its prompt, row and options: give state alone");
      return Session.load(this, opts.state);
    }
    return Session.start(this, opts);
  }

  /**
   * `num` samples, each the prompt (as the model read it) followed by what the model wrote. Options are
   * Python's table in camelCase (options.mjs): num, prompt, maxTokens, seed (number or BigInt; random if
   * left out), temperature, topK, topP, echo, allowUnk, ban; the others are Python-engine only. `pattern`:
   * a compiled regex / length bounds (`lstmgen compile-pattern`'s JSON, or a Pattern made from it).
   */
  async generate(opts = {}) {
    const o = checkOptions(opts, this.manifest.defaults);
    const num = o.num ?? 1;
    const maxTokens = o.max_tokens;
    const seed = o.seed === undefined ? randomSeed() : checkSeed(o.seed);
    const promptIds = this.encodePrompt(opts.prompt);
    const banned = this.bannedIds(o.allow_unk, o.ban ?? []);
    const patternFeeds = await this.patternFeedsOf(opts.pattern, promptIds, maxTokens, banned);
    const T = this.ort.Tensor;
    const int64 = (values, dims) => new T("int64", BigInt64Array.from(values, BigInt), dims);
    const feeds = {
      prompt_ids: int64(promptIds, [promptIds.length]), num: int64([num], []), max_tokens: int64([maxTokens], []),
      seed: new T("int64", BigInt64Array.from([seed]), []), temperature: new T("float64", Float64Array.from([o.temperature]), []),
      top_k: int64([o.top_k], []), top_p: new T("float64", Float64Array.from([o.top_p]), []), banned_ids: int64(banned, [banned.length]),
      ...patternFeeds,
    };
    const out = await this.graph.run(feeds);
    const tokens = out.tokens.data;
    const lengths = out.lengths.data;
    const texts = [];
    const skip = o.echo === false ? this.tokenizer.decode(promptIds).length : 0;
    for (let i = 0; i < num; i++) {
      const row = Array.from(tokens.subarray(i * maxTokens, i * maxTokens + Number(lengths[i])), Number);
      texts.push(this.tokenizer.decode([...promptIds, ...row]).slice(skip));
    }
    return texts;
  }
}
