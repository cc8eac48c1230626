// Step-by-step generation in JavaScript: a Session over the artifact's model.onnx (one model run per
// call), with the Python engine's sampler, random numbers and saved-state format ported here, so that
// the same seed and options write the same text as lstmgen.session.Session in Python, and a state
// saved by either runtime continues exactly in the other.
//
// Ported from (and tested against) the Python owners:
//   random numbers     engine/rng.py        (MurmurHash3's fmix32 with Math.imul: the same 32-bit words)
//   the sampler        engine/sampling.py   (RowSampler's bias, penalties and bans, then the Numba
//                                            kernel's steps and arithmetic: float32 where it is float32)
//   the saved state    engine/session.py    (the byte format is documented there)

import { Detokenizer, LstmgenError, checkOptions, checkSeed, randomSeed } from "./lstmgen.mjs";
import { OPTIONS } from "./options.mjs";

const MAGIC = new TextEncoder().encode("lstmgen-session\n");
const FORMAT_NAME = "lstmgen-session";
const FORMAT_VERSION = 2; // as engine/session.py: 2 adds a pattern, which this session refuses (it applies none)
const MAX_HEADER = 1 << 20;
const SAMPLING = OPTIONS.filter((o) => o.sampling).map((o) => o.name); // SamplingParams' fields, in order
const GROUPS = 16; // the kernel's top-k groups: they decide how it sums (see candidates)

// -- lstmgen.rng -----------------------------------------------------------------------------------------
const SEED_SALT = 0x9e3779b9;
const ROW_HI_MUL = 0x9e3779b1;

export function fmix32(x) {
  x ^= x >>> 16;
  x = Math.imul(x, 0x85ebca6b);
  x ^= x >>> 13;
  x = Math.imul(x, 0xc2b2ae35);
  x ^= x >>> 16;
  return x >>> 0;
}

/** The uint32 key of a row's stream: seed in [0, 2^63) and row in [0, 2^64), as BigInts. */
export function rowKey(seed, row) {
  const seedKey = fmix32(fmix32(Number(seed & 0xffffffffn) ^ SEED_SALT) ^ Number(seed >> 32n));
  const hi = Number(row >> 32n), lo = Number(row & 0xffffffffn);
  return fmix32(((seedKey + Math.imul(hi, ROW_HI_MUL)) >>> 0) ^ lo);
}

/** The row's uniform number in [0, 1) at a step (steps wrap at 2^32, as uint32 does). */
export function uniform(key, step) {
  return fmix32(key ^ (step >>> 0)) / 4294967296;
}

// -- the sampler ---------------------------------------------------------------------------------------------
/** What RowSampler.sample does to the logits before the kernel, and the kernel's repetition penalty. */
function adjusted(logits, s) {
  const x = Float64Array.from(logits); // float32 values, held exactly
  for (const [id, v] of s.bias) x[id] = Math.fround(x[id] + Math.fround(v));
  const p = s.params;
  if (s.counts !== null) {
    for (let j = 0; j < x.length; j++) {
      if (s.counts[j] > 0) x[j] = Math.fround(x[j] - Math.fround(s.counts[j] * p.frequency_penalty + p.presence_penalty));
    }
  }
  for (const id of s.banned) x[id] = -Infinity;
  if (p.repetition_penalty !== 1 && s.history !== null) {
    const seen = new Set();
    for (const tok of s.history) {
      if (tok < 0 || seen.has(tok)) continue;
      seen.add(tok);
      x[tok] = Math.fround(x[tok] > 0 ? x[tok] / p.repetition_penalty : x[tok] * p.repetition_penalty);
    }
  }
  return x;
}

function byPreference(values) {
  return (i, j) => values[j] - values[i] || i - j; // larger first, the lower id first among equals
}

/**
 * The kernel's candidates for row x: {e (exp((x - max) / T) as float64, float32 shift), kept ids in order
 * of preference, acc (their mass)}, or {argmax} when greedy, or {e, total} when nothing filters.
 */
function candidates(x, p) {
  const V = x.length;
  let m = -Infinity;
  for (let j = 0; j < V; j++) {
    if (Number.isNaN(x[j])) throw new LstmgenError("the model produced NaN logits (row 0); the model or its inputs are broken");
    if (x[j] > m) m = x[j];
  }
  if (m === -Infinity) throw new LstmgenError("the model produced only -inf logits (row 0); the model or its inputs are broken");
  if (p.temperature === 0) return { argmax: x.indexOf(m) };
  const invT = 1 / p.temperature;
  const e = new Float64Array(V);
  for (let j = 0; j < V; j++) e[j] = Math.exp(Math.fround(x[j] - m) * invT);
  const k = p.top_k > 0 && p.top_k < V ? p.top_k : V;
  if (k === V && p.top_p >= 1 && p.min_p <= 0) {
    let total = 0;
    for (let j = 0; j < V; j++) total += e[j];
    return { e, total };
  }
  let pref, limit;
  if (k < V) {
    const n = Math.min(k, kernelCandidateCount(x, m, k, p));
    const best = Array.from({ length: V }, (_, j) => j).sort(byPreference(x)).slice(0, n);
    pref = best.slice().sort(byPreference(e));
    let mass = 0; // the kernel sums few candidates in preference order, many in id order
    for (const id of n <= 64 ? pref : best.slice().sort((a, b) => a - b)) mass += e[id];
    limit = p.top_p * mass;
  } else {
    let total = 0;
    for (let j = 0; j < V; j++) total += e[j];
    pref = Array.from({ length: V }, (_, j) => j).sort(byPreference(e));
    limit = p.top_p * total;
  }
  const pmax = e[pref[0]];
  let acc = 0, kept = 0;
  for (let a = 0; a < pref.length; a++) {
    if (a > 0 && e[pref[a]] < p.min_p * pmax) break;
    acc += e[pref[a]];
    kept += 1;
    if (acc >= limit) break;
  }
  return { e, kept: pref.slice(0, kept), acc };
}

/** How many top-k candidates the kernel keeps (fewer than k only when the rest are out of reach). */
function kernelCandidateCount(x, m, k, p) {
  const penalised = p.repetition_penalty !== 1;
  if (Math.floor(x.length / GROUPS) >= k && !penalised) return k;
  let ratio = 8, count;
  for (;;) {
    const threshold = m - ratio * p.temperature;
    count = 0;
    for (let j = 0; j < x.length; j++) if (x[j] >= threshold) count += 1;
    if (count >= k || ratio > 1e4) return count;
    ratio *= 4;
  }
}

/** The token the kernel draws at uniform u. */
function draw(c, u) {
  if (c.argmax !== undefined) return c.argmax;
  if (c.total !== undefined) {
    const target = u * c.total;
    let acc = 0, last = 0;
    for (let j = 0; j < c.e.length; j++) {
      if (c.e[j] > 0) {
        acc += c.e[j];
        last = j;
        if (acc > target) return j;
      }
    }
    return last;
  }
  const target = u * c.acc;
  let run = 0;
  for (const id of c.kept) {
    run += c.e[id];
    if (run > target) return id;
  }
  return c.kept[c.kept.length - 1];
}

/** The chance of each token (Float64Array): lstmgen.sampling.distribution_rows. */
function probabilities(c, V) {
  const out = new Float64Array(V);
  if (c.argmax !== undefined) out[c.argmax] = 1;
  else if (c.total !== undefined) for (let j = 0; j < V; j++) out[j] = c.e[j] / c.total;
  else for (const id of c.kept) out[id] = c.e[id] / c.acc;
  return out;
}

/** lstmgen.sampling.RowSampler for one row: settings, random stream, repetition window, written counts. */
export class RowSampler {
  constructor(params, seed, row, context, banned, bias, vocabSize) {
    this.params = params;
    this.seed = seed;
    this.row = row;
    this.key = rowKey(seed, row);
    this.step = 0;
    this.banned = banned;
    this.bias = bias; // [[id, value], ...]
    this.V = vocabSize;
    this.history = null;
    if (params.repetition_penalty !== 1) {
      this.history = new Int32Array(params.repetition_window).fill(-1);
      this.read(context);
    }
    this.counts = null; // made at the first draw that needs them, as in Python (the saved state says so)
    this.countsWritten = params.frequency_penalty !== 0 || params.presence_penalty !== 0;
  }

  read(tokens) {
    if (this.history === null || !tokens.length) return;
    const w = this.history.length;
    const joined = [...this.history, ...tokens.slice(-w)];
    this.history.set(joined.slice(joined.length - w));
  }

  probabilities(logits) {
    return probabilities(candidates(adjusted(logits, this), this.params), this.V);
  }

  sample(logits) {
    const u = uniform(this.key, this.step);
    this.step += 1;
    if (this.countsWritten && this.counts === null) this.counts = new Int32Array(this.V);
    const token = draw(candidates(adjusted(logits, this), this.params), u);
    if (this.history !== null) {
      this.history.copyWithin(0, 1);
      this.history[this.history.length - 1] = token;
    }
    if (this.counts !== null) this.counts[token] += 1;
    return token;
  }
}

// -- the saved state (engine/session.py's format) ---------------------------------------------------------------
function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function le(array) {
  // Little-endian bytes of a typed array (every platform these runtimes run on is little-endian).
  return new Uint8Array(array.buffer.slice(array.byteOffset, array.byteOffset + array.byteLength));
}

async function sha256(bytes) {
  return new Uint8Array(await globalThis.crypto.subtle.digest("SHA-256", bytes));
}

/** The state as bytes: magic, header length, JSON header, arrays, sha256 of all that. */
export async function writeState(header, arrays) {
  const names = Object.keys(arrays);
  const full = { ...header, arrays: names.map((n) => [n, arrays[n] instanceof Float32Array ? "float32" : "int32", arrays[n].shape]) };
  const head = new TextEncoder().encode(JSON.stringify(full));
  const size = new Uint8Array(4);
  new DataView(size.buffer).setUint32(0, head.length, true);
  const body = concat([MAGIC, size, head, ...names.map((n) => le(arrays[n]))]);
  return concat([body, await sha256(body)]);
}

/** (header, arrays) of a saved state, checked as engine/session.py's read_state checks it (same messages). */
export async function readState(blob, modelSha256) {
  if (!(blob instanceof Uint8Array)) {
    throw new LstmgenError(`a session state is bytes (what Session.save returned), got ${blob === null ? "null" : typeof blob}`);
  }
  if (blob.length < MAGIC.length || !MAGIC.every((b, i) => blob[i] === b)) {
    throw new LstmgenError("this is not an lstmgen session state (it does not begin with the format's name); pass what Session.save returned");
  }
  const digest = blob.length >= MAGIC.length + 36 ? await sha256(blob.subarray(0, blob.length - 32)) : null;
  if (digest === null || !digest.every((b, i) => blob[blob.length - 32 + i] === b)) {
    throw new LstmgenError("the session state is damaged (its sha256 does not match its contents: truncated or altered); save it again from the session");
  }
  const size = new DataView(blob.buffer, blob.byteOffset).getUint32(MAGIC.length, true);
  const start = MAGIC.length + 4;
  let header;
  try {
    if (size > MAX_HEADER || start + size > blob.length - 32) throw new Error("header length beyond the state");
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(blob.subarray(start, start + size)));
    if (header === null || typeof header !== "object" || header.format !== FORMAT_NAME) throw new Error("not a session header");
  } catch (e) {
    throw new LstmgenError(`the session state's header is not valid (${e.message}); save it again from the session`);
  }
  if (!Number.isInteger(header.version) || header.version < 1) {
    throw new LstmgenError(`the session state has an invalid format version ${JSON.stringify(header.version)}`);
  }
  if (header.version > FORMAT_VERSION) {
    throw new LstmgenError(`the session state has format version ${header.version}, newer than this lstmgen reads (${FORMAT_VERSION}); upgrade lstmgen`);
  }
  if (header.settings && header.settings.pattern) {
    throw new LstmgenError("the session state keeps to a pattern (regex or lengths), which the JavaScript session does"
      + " not apply; continue it in Python");
  }
  if (header.model_sha256 !== modelSha256) {
    throw new LstmgenError(`the session state was saved from another model (model.onnx sha256 ${String(header.model_sha256).slice(0, 12)}...,`
      + ` this one's is ${modelSha256.slice(0, 12)}...); load it with the artifact it was saved from`);
  }
  return { header, arrays: readArrays(header, blob.subarray(start + size, blob.length - 32)) };
}

function readArrays(header, payload) {
  const out = {};
  let at = 0;
  try {
    for (const [name, dtype, shape] of header.arrays) {
      if (name in out || !["float32", "int32"].includes(dtype) || !shape.every((n) => Number.isInteger(n) && n >= 0)) {
        throw new Error(`array '${name}'`);
      }
      const count = shape.reduce((a, b) => a * b, 1);
      if (at + count * 4 > payload.length) throw new Error("arrays beyond the state");
      const bytes = payload.slice(at, at + count * 4); // a copy: aligned for the typed array
      out[name] = dtype === "float32" ? new Float32Array(bytes.buffer) : new Int32Array(bytes.buffer);
      out[name].shape = shape;
      at += count * 4;
    }
    if (at !== payload.length || !["h", "c", "logits", "ids"].every((n) => n in out)) throw new Error("arrays missing or bytes left over");
  } catch (e) {
    throw new LstmgenError(`the session state's arrays are not valid (${e.message}); save it again from the session`);
  }
  return out;
}

export { FORMAT_NAME, FORMAT_VERSION, SAMPLING };

// -- the Session ---------------------------------------------------------------------------------------------------
/**
 * One row of generation driven step by step (make one with Generator.session): top(k), append(text or a
 * choice), sample(), text, save(). Python's lstmgen.session.Session, step for step: the same seed and
 * options write the same text, and a state saved by either continues in the other.
 */
export class Session {
  constructor(gen, sampler, ids, h, c, logits, textFrom, ended = false) {
    this.gen = gen;
    this.sampler = sampler;
    this.ids = ids; // every token read, the artifact's start tokens first
    this.h = h;
    this.c = c;
    this.logits = logits; // Float32Array [vocab]: what the next token is drawn from
    this.ended = ended;
    this.start = textFrom; // the text leaves out the start tokens the engine put before the prompt
    this.detok = new Detokenizer(gen.tokenizer);
    this.parts = ids.slice(this.start).map((id) => this.detok.piece(id));
  }

  static async start(gen, opts) {
    const o = checkOptions(opts, gen.manifest.defaults, "session");
    const seed = o.seed === undefined ? randomSeed() : checkSeed(o.seed);
    const row = checkRow(opts.row ?? 0);
    const params = Object.fromEntries(SAMPLING.map((name) => [name, o[name]]));
    const context = [...gen.manifest.start_ids, ...gen.encodePrompt(opts.prompt)];
    const sampler = new RowSampler(params, seed, row, context, gen.bannedIds(o.allow_unk, o.ban ?? []),
      gen.biasIds(o.bias, o.logit_bias), gen.tokenizer.tokens.length);
    const { logits, h, c } = await gen.runModel(context);
    return new Session(gen, sampler, context, h, c, logits, gen.manifest.start_ids.length);
  }

  /** Everything so far: the prompt as the model read it, appended text and sampled tokens. */
  get text() {
    return this.parts.join("");
  }

  /** Every token read after the start tokens (an end marker included). */
  get tokenIds() {
    return this.ids.slice(this.start);
  }

  /** Tokens sampled so far: the row's random stream is at this step. */
  get steps() {
    return this.sampler.step;
  }

  /** The k tokens sample() is likeliest to draw now, likeliest first: [{token, id, text, probability}]. */
  top(k = 5) {
    if (!Number.isInteger(k) || k < 1) throw new LstmgenError(`top needs a number of tokens >= 1, got ${k}`);
    this.checkOpen();
    const p = this.sampler.probabilities(this.logits);
    const ids = [...p.keys()].filter((i) => p[i] > 0).sort((i, j) => p[j] - p[i] || i - j).slice(0, k);
    return ids.map((id) => ({ token: this.gen.tokenizer.tokens[id], id, text: this.detok.copy().piece(id), probability: p[id] }));
  }

  /** Feed text (checked as a prompt is) or one of top()'s choices. */
  async append(text) {
    this.checkOpen();
    const eos = this.gen.tokenizer.eosId;
    let ids;
    if (typeof text === "string") ids = this.gen.encodePrompt(text);
    else if (text && Number.isInteger(text.id) && text.id >= 0 && text.id < this.gen.tokenizer.tokens.length) ids = [text.id];
    else throw new LstmgenError("append takes text or one of top()'s choices");
    if (!ids.length) return;
    if (ids.length === 1 && ids[0] === eos) { // a chosen end marker ends the record, as a sampled one does
      this.take(eos);
      this.ended = true;
      return;
    }
    ({ logits: this.logits, h: this.h, c: this.c } = await this.gen.runModel(ids, this.h, this.c));
    this.sampler.read(ids);
    for (const id of ids) this.take(id);
  }

  /** Draw one token with the session's seed and options, feed it, and return the text it writes. */
  async sample() {
    this.checkOpen();
    const token = this.sampler.sample(this.logits);
    const piece = this.take(token);
    if (token === this.gen.tokenizer.eosId) {
      this.ended = true;
      return piece;
    }
    ({ logits: this.logits, h: this.h, c: this.c } = await this.gen.runModel([token], this.h, this.c));
    return piece;
  }

  take(id) {
    this.ids.push(id);
    const piece = this.detok.piece(id);
    this.parts.push(piece);
    return piece;
  }

  checkOpen() {
    if (this.ended) {
      throw new LstmgenError("this session has ended (the model wrote a record's end marker, or the pattern allows"
        + " nothing more); start a new session");
    }
  }

  /** The whole state as bytes (Uint8Array), in engine/session.py's format. */
  async save() {
    const { num_layers: L, hidden_size: H, vocab_size: V } = this.gen.manifest.dims;
    const s = this.sampler;
    const shaped = (a, shape) => Object.assign(a, { shape });
    const arrays = { h: shaped(Float32Array.from(this.h), [L, H]), c: shaped(Float32Array.from(this.c), [L, H]),
                     logits: shaped(Float32Array.from(this.logits), [V]), ids: shaped(Int32Array.from(this.ids), [this.ids.length]) };
    if (s.history !== null) arrays.history = shaped(Int32Array.from(s.history), [s.history.length]);
    if (s.counts !== null) arrays.counts = shaped(Int32Array.from(s.counts), [V]);
    const header = {
      format: FORMAT_NAME, version: FORMAT_VERSION, model_sha256: this.gen.manifest.model_sha256,
      seed: String(s.seed), row: String(s.row), step: s.step, ended: this.ended, text_from: this.start,
      settings: { params: s.params, banned: s.banned, bias: Object.fromEntries(s.bias.map(([id, v]) => [String(id), v])) },
    };
    return writeState(header, arrays);
  }

  /** The session a save() wrote (here or in Python), checked against this artifact. */
  static async load(gen, blob) {
    const { header, arrays } = await readState(blob, gen.manifest.model_sha256);
    try {
      return restore(gen, header, arrays);
    } catch (e) {
      if (e instanceof LstmgenError) throw e;
      throw new LstmgenError(`the session state is malformed (${e.message}); save it again from the session`);
    }
  }
}

function checkRow(row) {
  let r;
  try {
    r = BigInt(row);
  } catch {
    r = -1n;
  }
  if (r < 0n || r >= 2n ** 64n || (typeof row === "number" && !Number.isSafeInteger(row))) {
    throw new LstmgenError(`row must be an integer in [0, 2^64), got ${row}`);
  }
  return r;
}

function restore(gen, header, arrays) {
  const { num_layers: L, hidden_size: H, vocab_size: V } = gen.manifest.dims;
  const settings = header.settings;
  const given = {};
  for (const name of SAMPLING) given[OPTION_JS[name]] = settings.params[name];
  const o = checkOptions({ ...given, logitBias: settings.bias }, gen.manifest.defaults, "session");
  const params = Object.fromEntries(SAMPLING.map((name) => [name, o[name]]));
  const banned = settings.banned;
  const seed = BigInt(header.seed), row = BigInt(header.row);
  if (!Array.isArray(banned) || !banned.every((i) => Number.isInteger(i) && i >= 0 && i < V) || seed < 0n || seed >= 2n ** 63n
      || row < 0n || row >= 2n ** 64n || !Number.isInteger(header.step) || header.step < 0 || typeof header.ended !== "boolean"
      || !Number.isInteger(header.text_from) || header.text_from < 0 || header.text_from > arrays.ids.length) {
    throw new Error("settings, seed, row, step or text_from out of range");
  }
  const expect = { h: [L, H], c: [L, H], logits: [V], counts: [V], history: [params.repetition_window] };
  for (const [name, a] of Object.entries(arrays)) {
    if (name !== "ids" && (!(name in expect) || a.shape.join() !== expect[name].join())) throw new Error(`array ${name} of shape ${a.shape}`);
  }
  const ids = Array.from(arrays.ids);
  const starts = gen.manifest.start_ids;
  if (arrays.ids.shape.length !== 1 || ids.some((i) => i < 0 || i >= V) || starts.some((s, i) => ids[i] !== s)) {
    throw new Error("token ids outside the vocabulary, or not after the start tokens");
  }
  if (("history" in arrays) !== (params.repetition_penalty !== 1)) throw new Error("the repetition window does not match the settings");
  const bias = gen.biasIds({}, o.logit_bias);
  const sampler = new RowSampler(params, seed, row, [], banned, bias, V);
  if (arrays.history) sampler.history = Int32Array.from(arrays.history);
  if (arrays.counts) sampler.counts = Int32Array.from(arrays.counts);
  sampler.step = header.step;
  return new Session(gen, sampler, ids, arrays.h, arrays.c, arrays.logits, header.text_from, header.ended);
}

const OPTION_JS = Object.fromEntries(OPTIONS.map((o) => [o.name, o.js]));
