// node tests/js/session_node.mjs FOLDER: reads a JSON list of ops on stdin, runs them (session_script.mjs)
// with onnxruntime-node, prints the results as JSON.
import { readFileSync } from "node:fs";

import { load } from "../../js/node.mjs";
import { runScript } from "./session_script.mjs";

const gen = await load(process.argv[2]);
console.log(JSON.stringify(await runScript(gen, JSON.parse(readFileSync(0, "utf-8")))));
