// Print samples from an lstmgen artifact with Node.js, like `lstmgen generate MODEL --allow-known`.
// Usage: node js/examples/generate.mjs exported/names --num 10 --seed 7 [--prompt TEXT] [--max-tokens N]
//        [--temperature T] [--top-k K] [--top-p P] [--no-echo] [--allow-unk] [--ban TOKEN] [--json]
//        [--pattern FILE]
// The flags are the options table's (options.mjs): the ones generate.onnx applies, and the others, which it
// refuses in one line; --pattern takes what `lstmgen compile-pattern` wrote (a regex and length bounds,
// compiled in Python). MODEL is a folder, or a shipped model's name (exported/NAME in this repository).
import { parseArgs } from "node:util";

import { OPTIONS } from "../lstmgen.mjs";
import { LstmgenError, load, loadPattern } from "../node.mjs";
import { negativeNumbersAsValues, numberFlag, runCli, seedFlag } from "./cli.mjs";

// Every option of the table is a flag, the ones generate.onnx leaves out (--min-p, --logprobs, ...) too, so
// that the generator says why it refuses them; a pattern's options (regex, ...) likewise say to use --pattern.
const flag = (o) => (o.kind === "bool" && o.off === true ? "no-" : "") + o.name.replaceAll("_", "-");
const options = { prompt: { type: "string" }, json: { type: "boolean" }, pattern: { type: "string" } };
for (const o of OPTIONS) {
  options[flag(o)] = o.kind === "bool" ? { type: "boolean" } : { type: "string", multiple: o.kind === "texts" };
}

/** A flag's value as the option's kind: numbers parsed (seeds as BigInt), --no-echo turned into echo: false. */
function optionValue(o, raw) {
  if (o.kind === "bool") return o.off === true ? !raw : raw;
  if (o.kind === "texts" || o.kind === "text" || o.kind === "text_map") return raw;
  if (o.name === "seed") return seedFlag(raw);
  return numberFlag(flag(o), raw);
}

await runCli(async () => {
  const args = negativeNumbersAsValues(process.argv.slice(2));
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options });
  if (positionals.length !== 1) throw new LstmgenError("give one artifact folder, e.g. exported/names");
  const gen = await load(positionals[0]);
  const opts = { prompt: values.prompt };
  if (values.pattern !== undefined) opts.pattern = await loadPattern(values.pattern);
  for (const o of OPTIONS) if (values[flag(o)] !== undefined) opts[o.js] = optionValue(o, values[flag(o)]);
  opts.num ??= gen.records ? 10 : 1;
  const samples = await gen.generate(opts);
  if (values.json) console.log(JSON.stringify({ samples }));
  else console.log(samples.join(gen.records ? "\n" : "\n\n----\n\n"));
});
