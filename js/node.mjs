// Node.js loader: an artifact folder on disk -> a Generator running on onnxruntime-node.
import { readFile, stat } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as ort from "onnxruntime-node";

import { GENERATE_FILE, Generator, LstmgenError, MANIFEST_FILE, MODEL_FILE, Pattern, checkArtifact, checkModel } from "./lstmgen.mjs";

export { Generator, LstmgenError, Pattern };

/** A pattern file written by `lstmgen compile-pattern` (pass it to generate as `pattern`). */
export async function loadPattern(file) {
  const bytes = await readOrNull(file);
  if (bytes === null) throw new LstmgenError(`pattern file not found: ${file} (write it with \`lstmgen compile-pattern\`)`);
  try {
    return new Pattern(JSON.parse(bytes.toString("utf-8")));
  } catch (e) {
    if (e instanceof LstmgenError) throw e;
    throw new LstmgenError(`${file} is not valid JSON (${e.message}); write it with \`lstmgen compile-pattern\``);
  }
}

async function readOrNull(file) {
  try {
    return await readFile(file);
  } catch (e) {
    if (e.code === "ENOENT") return null;
    throw e;
  }
}

const SHIPPED = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "exported");

/** The folder of `nameOrFolder`: the folder itself, or a shipped model's (exported/NAME), as Python resolves it. */
async function resolveModel(nameOrFolder) {
  if (await exists(nameOrFolder)) return nameOrFolder;
  const shipped = path.join(SHIPPED, nameOrFolder);
  if (!nameOrFolder.includes(path.sep) && await exists(path.join(shipped, MANIFEST_FILE))) return shipped;
  throw new LstmgenError(`model folder not found: ${nameOrFolder} (give an exported artifact folder or a shipped model name)`);
}

async function exists(file) {
  try {
    await stat(file);
    return true;
  } catch (e) {
    if (e.code === "ENOENT") return false;
    throw e;
  }
}

/** Load the artifact in `folder` (manifest.json + generate.onnx + model.onnx; or a shipped model's name) and
 * check its hashes; a Session opens model.onnx (its hash checked then) when it first runs. */
export async function load(nameOrFolder) {
  const folder = await resolveModel(nameOrFolder);
  const manifestBytes = await readOrNull(path.join(folder, MANIFEST_FILE));
  if (manifestBytes === null) {
    throw new LstmgenError(`${folder} has no ${MANIFEST_FILE}: not an lstmgen artifact folder`);
  }
  let manifest;
  try {
    manifest = JSON.parse(manifestBytes.toString("utf-8"));
  } catch (e) {
    throw new LstmgenError(`${path.join(folder, MANIFEST_FILE)} is not valid JSON (${e.message}); re-export the model`);
  }
  const graphBytes = await readOrNull(path.join(folder, GENERATE_FILE));
  await checkArtifact(manifest, graphBytes, folder, GENERATE_FILE);
  // From the path, so that ONNX Runtime finds the weights generate.onnx reads from model.onnx beside it.
  const session = await ort.InferenceSession.create(path.join(folder, GENERATE_FILE), { executionProviders: ["cpu"] });
  const openModel = async () => {
    const modelBytes = await readOrNull(path.join(folder, MODEL_FILE));
    await checkModel(manifest, modelBytes, folder);
    return ort.InferenceSession.create(modelBytes, { executionProviders: ["cpu"] });
  };
  return new Generator(ort, session, manifest, openModel);
}
