// What both command-line examples share: flags parsed as Python's argparse reads them, values checked with
// one-line errors, and every user error printed as one `lstmgen: error:` line with exit code 2.
import { LstmgenError } from "../node.mjs";

/** `--temperature -1` -> `--temperature=-1`: a negative number is the flag's (bad) value, as in Python's argparse. */
export function negativeNumbersAsValues(argv) {
  const out = [];
  for (const arg of argv) {
    const previous = out.at(-1);
    if (/^-\d/.test(arg) && previous?.startsWith("--") && !previous.includes("=")) out[out.length - 1] = `${previous}=${arg}`;
    else out.push(arg);
  }
  return out;
}

/** A flag's number; text that is none is named as typed (the options table then checks the range). */
export function numberFlag(flag, raw) {
  const value = Number(raw);
  if (raw.trim() === "" || Number.isNaN(value)) throw new LstmgenError(`--${flag} must be a number, got '${raw}'`);
  return value;
}

/** A seed as the BigInt the generator takes; its range is checked by the options table. */
export function seedFlag(raw) {
  if (!/^-?\d+$/.test(raw.trim())) throw new LstmgenError(`--seed must be an integer, got '${raw}'`);
  return BigInt(raw.trim());
}

/** Run an example's main: user errors (bad flags, files, options) end in one line and exit code 2. */
export async function runCli(main) {
  try {
    await main();
  } catch (e) {
    if (e.code === "ENOENT" && e.path) e = new LstmgenError(`file not found: ${e.path}`);
    if (!(e instanceof LstmgenError || e instanceof SyntaxError || e instanceof RangeError
          || e.code?.startsWith("ERR_PARSE_ARGS"))) throw e;
    console.error(`lstmgen: error: ${e.message}`);
    process.exitCode = 2;
  }
}
