// lstmgen for JavaScript: generate text from an lstmgen artifact's generate.onnx with ONNX Runtime.
//
// The whole generation (prefill, decode loop, sampling, random numbers) is inside generate.onnx, so
// this module only checks the request, encodes the prompt, makes one session.run call and decodes
// the tokens: the same seed and settings give the same text as `lstmgen generate` in Python.
// It takes the runtime as an argument (onnxruntime-node or onnxruntime-web), so it runs in both;
// node.mjs and web.mjs load an artifact folder for each.

export const GENERATE_FILE = "generate.onnx"; // for onnxruntime-node (and every native ONNX Runtime)
export const GENERATE_WEB_FILE = "generate-web.onnx"; // the same graph in the layout onnxruntime-web loads
const DIGEST_KEYS = { [GENERATE_FILE]: "generate_sha256", [GENERATE_WEB_FILE]: "generate_web_sha256" };
export const MODEL_FILE = "model.onnx";
export const MANIFEST_FILE = "manifest.json";
const MAX_NUM = 100_000; // as lstmgen.generator
const MAX_TOKENS_LIMIT = 100_000;
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
class Detokenizer {
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
}

function isFiniteNumber(x) {
  return typeof x === "number" && Number.isFinite(x);
}

function checkInteger(name, value, lo, hi) {
  if (!Number.isInteger(value) || value < lo || value > hi) {
    throw new LstmgenError(`${name} must be an integer in [${lo}, ${hi}], got ${value}`);
  }
  return value;
}

/** The settings of one call, checked with lstmgen.sampling.check_sampling's ranges and messages. */
function checkSettings(opts, defaults) {
  for (const [key, name, off] of [["minP", "min_p", 0], ["repetitionPenalty", "repetition_penalty", 1]]) {
    if (opts[key] !== undefined && opts[key] !== off) {
      throw new LstmgenError(`${GENERATE_FILE} does not apply ${name}; leave it out or generate with the Python engine`);
    }
  }
  if (opts.stop !== undefined && opts.stop.length) {
    throw new LstmgenError(`${GENERATE_FILE} does not apply stop strings; cut the texts afterwards or use the Python engine`);
  }
  const temperature = opts.temperature ?? defaults.temperature;
  if (!isFiniteNumber(temperature) || temperature < 0) {
    throw new LstmgenError(`temperature must be a number >= 0 (0 = greedy), got ${temperature}`);
  }
  if (temperature > 100) throw new LstmgenError(`temperature ${temperature} is absurdly high (use at most 100)`);
  if (opts.topK !== undefined && (!Number.isInteger(opts.topK) || opts.topK < 1)) {
    throw new LstmgenError(`top-k must be an integer >= 1 (leave it out to sample from the whole vocabulary), got ${opts.topK}`);
  }
  const topK = opts.topK ?? defaults.top_k;
  const topP = opts.topP ?? defaults.top_p;
  if (!isFiniteNumber(topP) || !(topP > 0 && topP <= 1)) throw new LstmgenError(`top-p must be in (0, 1], got ${topP}`);
  return { temperature, topK, topP };
}

function checkSeed(seed) {
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

function randomSeed() {
  return BigInt(globalThis.crypto.getRandomValues(new Uint32Array(1))[0]);
}

/** A loaded artifact: `generate` runs generate.onnx once and returns the texts. */
export class Generator {
  constructor(ort, session, manifest) {
    this.ort = ort;
    this.session = session;
    this.manifest = manifest;
    this.tokenizer = new Tokenizer(manifest.tokenizer);
  }

  get records() {
    return this.manifest.records;
  }

  encodePrompt(prompt) {
    if (!prompt) return [];
    if (this.records && prompt.includes("\n")) {
      throw new LstmgenError("a prompt for a records model must be one line (a record's beginning)");
    }
    const ids = this.tokenizer.encode(prompt);
    if (this.tokenizer.eosId !== null && ids.includes(this.tokenizer.eosId)) {
      throw new LstmgenError("the prompt contains the end-of-record token text; remove it");
    }
    return ids;
  }

  /**
   * `num` samples, each the prompt followed by what the model wrote. Options: num, prompt, maxTokens,
   * seed (number or BigInt; random if left out), temperature, topK, topP, allowUnk.
   */
  async generate(opts = {}) {
    const d = this.manifest.defaults;
    const num = checkInteger("num", opts.num ?? 1, 1, MAX_NUM);
    const maxTokens = checkInteger("max-tokens", opts.maxTokens ?? d.max_tokens, 1, MAX_TOKENS_LIMIT);
    const { temperature, topK, topP } = checkSettings(opts, d);
    const seed = opts.seed === undefined ? randomSeed() : checkSeed(opts.seed);
    const promptIds = this.encodePrompt(opts.prompt);
    const unk = this.tokenizer.unkId;
    const banned = opts.allowUnk || unk === null ? [] : [unk];
    const T = this.ort.Tensor;
    const int64 = (values, dims) => new T("int64", BigInt64Array.from(values, BigInt), dims);
    const feeds = {
      prompt_ids: int64(promptIds, [promptIds.length]), num: int64([num], []), max_tokens: int64([maxTokens], []),
      seed: new T("int64", BigInt64Array.from([seed]), []), temperature: new T("float64", Float64Array.from([temperature]), []),
      top_k: int64([topK], []), top_p: new T("float64", Float64Array.from([topP]), []), banned_ids: int64(banned, [banned.length]),
    };
    const out = await this.session.run(feeds);
    const tokens = out.tokens.data;
    const lengths = out.lengths.data;
    const texts = [];
    for (let i = 0; i < num; i++) {
      const row = Array.from(tokens.subarray(i * maxTokens, i * maxTokens + Number(lengths[i])), Number);
      texts.push(this.tokenizer.decode([...promptIds, ...row]));
    }
    return texts;
  }
}
