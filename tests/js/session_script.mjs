// A script of Session calls, run by the JavaScript Session here and by Python's in tests/test_session_js.py,
// so that both runtimes do the very same things: ops are {start: {options, Python names}}, {sample: n},
// {top: k}, {append: text}, {append_choice: i} (the i-th of the last top), {save: true}, {load: base64 or
// "last"}. Each op's result: the text after it, the top list, or the saved state (base64).
import { OPTIONS } from "../../js/lstmgen.mjs";

const JS_NAME = Object.fromEntries(OPTIONS.map((o) => [o.name, o.js]));

function toBase64(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

function fromBase64(text) {
  return Uint8Array.from(atob(text), (ch) => ch.charCodeAt(0));
}

export async function runScript(gen, ops) {
  let session = null, lastTop = [], lastSaved = null;
  const out = [];
  for (const op of ops) {
    try {
      if (op.start) {
        const opts = {};
        for (const [k, v] of Object.entries(op.start)) opts[JS_NAME[k] ?? k] = k === "seed" ? BigInt(v) : v;
        session = await gen.session(opts);
        out.push(session.text);
      } else if (op.sample !== undefined) {
        for (let i = 0; i < op.sample && !session.ended; i++) await session.sample();
        out.push(session.text);
      } else if (op.top !== undefined) {
        lastTop = session.top(op.top);
        out.push(lastTop.map((t) => [t.token, t.id, t.probability, t.text]));
      } else if (op.append !== undefined) {
        await session.append(op.append);
        out.push(session.text);
      } else if (op.append_choice !== undefined) {
        await session.append(lastTop[op.append_choice]);
        out.push(session.text);
      } else if (op.save) {
        lastSaved = await session.save();
        out.push(toBase64(lastSaved));
      } else if (op.load !== undefined) {
        session = await gen.session({ state: op.load === "last" ? lastSaved : fromBase64(op.load) });
        out.push(session.text);
      }
    } catch (e) {
      out.push({ error: e.message, name: e.name });
    }
  }
  return out;
}
