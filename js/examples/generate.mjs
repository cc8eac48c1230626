// Print samples from an lstmgen artifact with Node.js, like `lstmgen generate MODEL --allow-known`.
// Usage: node js/examples/generate.mjs exported/names --num 10 --seed 7 [--prompt TEXT] [--max-tokens N]
//        [--temperature T] [--top-k K] [--top-p P] [--allow-unk] [--json]
import { parseArgs } from "node:util";

import { LstmgenError, load } from "../node.mjs";

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

const options = {
  num: { type: "string" }, seed: { type: "string" }, prompt: { type: "string" }, "max-tokens": { type: "string" },
  temperature: { type: "string" }, "top-k": { type: "string" }, "top-p": { type: "string" },
  "allow-unk": { type: "boolean" }, json: { type: "boolean" },
};

try {
  const args = negativeNumbersAsValues(process.argv.slice(2));
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options });
  const number = (flag, parse = Number) => (values[flag] === undefined ? undefined : parse(values[flag]));
  if (positionals.length !== 1) throw new LstmgenError("give one artifact folder, e.g. exported/names");
  const gen = await load(positionals[0]);
  const samples = await gen.generate({
    num: number("num") ?? (gen.records ? 10 : 1), seed: number("seed", BigInt), prompt: values.prompt,
    maxTokens: number("max-tokens"), temperature: number("temperature"), topK: number("top-k"), topP: number("top-p"),
    allowUnk: values["allow-unk"],
  });
  if (values.json) console.log(JSON.stringify({ samples }));
  else console.log(samples.join(gen.records ? "\n" : "\n\n----\n\n"));
} catch (e) {
  if (!(e instanceof LstmgenError || e instanceof SyntaxError || e.code?.startsWith("ERR_PARSE_ARGS"))) throw e;
  console.error(`lstmgen: error: ${e.message}`);
  process.exitCode = 2;
}
