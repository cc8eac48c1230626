// Step by step with a Session over model.onnx: the likeliest next tokens after a text (autocomplete),
// then N sampled tokens, then the state saved to a file and continued from it.
// Usage: node js/examples/session.mjs exported/shakespeare --prompt "ROMEO:" [--top 5] [--sample 40]
//        [--seed 7] [--temperature T] [--top-k K] [--save state.bin | --load state.bin]
import { readFile, writeFile } from "node:fs/promises";
import { parseArgs } from "node:util";

import { LstmgenError, load } from "../node.mjs";
import { negativeNumbersAsValues, numberFlag, runCli, seedFlag } from "./cli.mjs";

await runCli(async () => {
  const { values, positionals } = parseArgs({ args: negativeNumbersAsValues(process.argv.slice(2)), allowPositionals: true,
    options: {
      prompt: { type: "string" }, top: { type: "string", default: "5" }, sample: { type: "string", default: "40" },
      seed: { type: "string" }, temperature: { type: "string" }, "top-k": { type: "string" },
      save: { type: "string" }, load: { type: "string" },
    } });
  if (positionals.length !== 1) throw new LstmgenError("give one artifact folder, e.g. exported/shakespeare");
  const gen = await load(positionals[0]);
  const opts = { prompt: values.prompt?.replaceAll("\\n", "\n") };
  if (values.seed !== undefined) opts.seed = seedFlag(values.seed);
  if (values.temperature !== undefined) opts.temperature = numberFlag("temperature", values.temperature);
  if (values["top-k"] !== undefined) opts.topK = numberFlag("top-k", values["top-k"]);
  const session = values.load ? await gen.session({ state: new Uint8Array(await readFile(values.load)) }) : await gen.session(opts);
  for (const t of session.top(numberFlag("top", values.top))) console.log(`${JSON.stringify(t.text).padEnd(12)} ${t.probability.toFixed(4)}`);
  for (let i = 0; i < numberFlag("sample", values.sample) && !session.ended; i++) await session.sample();
  console.log(session.text);
  if (values.save) await writeFile(values.save, await session.save());
});
