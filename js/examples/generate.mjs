// Print samples from an lstmgen artifact with Node.js, like `lstmgen generate MODEL --allow-known`.
// Usage: node js/examples/generate.mjs exported/names --num 10 --seed 7 [--prompt TEXT] [--max-tokens N]
//        [--temperature T] [--top-k K] [--top-p P] [--no-echo] [--allow-unk] [--ban TOKEN] [--json]
//        [--pattern FILE]
// The flags are those of the options generate.onnx applies, from the options table (options.mjs);
// --pattern takes what `lstmgen compile-pattern` wrote (a regex and length bounds, compiled in Python).
import { parseArgs } from "node:util";

import { OPTIONS } from "../lstmgen.mjs";
import { LstmgenError, load, loadPattern } from "../node.mjs";

/** `--temperature -1` -> `--temperature=-1`: a negative number is the flag's (bad) value, as in Python's argparse. */
function negativeNumbersAsValues(argv) {
  const out = [];
  for (const arg of argv) {
    const previous = out.at(-1);
    if (/^-\d/.test(arg) && previous?.startsWith("--") && !previous.includes("=")) out[out.length - 1] = `${previous}=${arg}`;
    else out.push(arg);
  }
  return out;
}

// A pattern's options (regex, ...) are taken so that generate can say how to pass them instead (--pattern).
const applied = OPTIONS.filter((o) => o.js_applies);
const flag = (o) => (o.kind === "bool" && o.off === true ? "no-" : "") + o.name.replaceAll("_", "-");
const options = { prompt: { type: "string" }, json: { type: "boolean" }, pattern: { type: "string" } };
for (const o of applied) {
  options[flag(o)] = o.kind === "bool" ? { type: "boolean" } : { type: "string", multiple: o.kind === "texts" };
}

/** A flag's value as the option's kind: numbers parsed (seeds as BigInt), --no-echo turned into echo: false. */
function optionValue(o, raw) {
  if (o.kind === "bool") return o.off === true ? !raw : raw;
  if (o.kind === "texts") return raw;
  if (o.name === "seed") return BigInt(raw);
  if (o.kind === "text") return raw;
  return Number(raw);
}

try {
  const args = negativeNumbersAsValues(process.argv.slice(2));
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options });
  if (positionals.length !== 1) throw new LstmgenError("give one artifact folder, e.g. exported/names");
  const gen = await load(positionals[0]);
  const opts = { prompt: values.prompt };
  if (values.pattern !== undefined) opts.pattern = await loadPattern(values.pattern);
  for (const o of applied) if (values[flag(o)] !== undefined) opts[o.js] = optionValue(o, values[flag(o)]);
  opts.num ??= gen.records ? 10 : 1;
  const samples = await gen.generate(opts);
  if (values.json) console.log(JSON.stringify({ samples }));
  else console.log(samples.join(gen.records ? "\n" : "\n\n----\n\n"));
} catch (e) {
  if (!(e instanceof LstmgenError || e instanceof SyntaxError || e instanceof RangeError
        || e.code?.startsWith("ERR_PARSE_ARGS"))) throw e;
  console.error(`lstmgen: error: ${e.message}`);
  process.exitCode = 2;
}
