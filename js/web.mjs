// Browser (or any fetch-capable) loader: an artifact folder at a URL -> a Generator on onnxruntime-web.
// The runtime is passed in, so the page decides where onnxruntime-web and its .wasm files come from.
import { GENERATE_WEB_FILE, Generator, LstmgenError, MANIFEST_FILE, MODEL_FILE, Pattern, checkArtifact, checkModel } from "./lstmgen.mjs";

export { Generator, LstmgenError, Pattern };

async function fetchBytes(url, init) {
  const response = await fetch(url, init);
  if (response.status === 404) return null;
  if (!response.ok) throw new LstmgenError(`cannot fetch ${url} (HTTP ${response.status})`);
  return new Uint8Array(await response.arrayBuffer());
}

/**
 * Load the artifact at `folderUrl` (manifest.json, generate-web.onnx, model.onnx) and check its hashes.
 * `init` is passed to every fetch: e.g. `{ headers: { Authorization: "Bearer KEY" } }` for `lstmgen serve`.
 */
export async function load(ort, folderUrl, init = {}) {
  const base = folderUrl.endsWith("/") ? folderUrl : `${folderUrl}/`;
  const manifestBytes = await fetchBytes(base + MANIFEST_FILE, init);
  if (manifestBytes === null) throw new LstmgenError(`${folderUrl} has no ${MANIFEST_FILE}: not an lstmgen artifact folder`);
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder().decode(manifestBytes));
  } catch (e) {
    throw new LstmgenError(`${base}${MANIFEST_FILE} is not valid JSON (${e.message}); re-export the model`);
  }
  const graphBytes = await fetchBytes(base + GENERATE_WEB_FILE, init);
  await checkArtifact(manifest, graphBytes, folderUrl, GENERATE_WEB_FILE);
  const modelBytes = await fetchBytes(base + MODEL_FILE, init);
  if (modelBytes === null) throw new LstmgenError(`${folderUrl} has no ${MODEL_FILE} (the artifact is incomplete; re-export it)`);
  // The graph reads its weights from model.onnx (ONNX external data): hand the runtime those bytes.
  const session = await ort.InferenceSession.create(graphBytes, {
    executionProviders: ["wasm"], externalData: [{ path: MODEL_FILE, data: modelBytes }],
  });
  const openModel = async () => { // a step-by-step Session runs model.onnx itself
    await checkModel(manifest, modelBytes, folderUrl);
    return ort.InferenceSession.create(modelBytes, { executionProviders: ["wasm"] });
  };
  return new Generator(ort, session, manifest, openModel);
}

/** A compiled pattern (what `lstmgen compile-pattern` writes, or POST /v1/pattern answers) at a URL. */
export async function fetchPattern(url, init = {}) {
  const bytes = await fetchBytes(url, init);
  if (bytes === null) throw new LstmgenError(`no pattern file at ${url} (write it with \`lstmgen compile-pattern\`)`);
  try {
    return new Pattern(JSON.parse(new TextDecoder().decode(bytes)));
  } catch (e) {
    if (e instanceof LstmgenError) throw e;
    throw new LstmgenError(`${url} is not valid JSON (${e.message}); write it with \`lstmgen compile-pattern\``);
  }
}
