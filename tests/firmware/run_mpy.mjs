// Run Python source files, then Python from stdin, in one real MicroPython interpreter (WebAssembly port).
//
//   node run_mpy.mjs FILE.py... < program.py
//
// Everything shares one global namespace, like `exec` of the files in order. MicroPython's stdout
// goes to stdout; a Python exception prints its traceback on stderr and exits with status 1.
import { readFileSync } from "node:fs";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const mp = await loadMicroPython({
  heapsize: 4 * 1024 * 1024,
  stdout: (line) => process.stdout.write(line + "\n"),
  stderr: (line) => process.stderr.write(line + "\n"),
});
const sources = process.argv.slice(2).map((path) => readFileSync(path, "utf8"));
sources.push(readFileSync(0, "utf8"));
try {
  for (const source of sources) mp.runPython(source);
} catch (err) {
  process.stderr.write(String(err.message ?? err) + "\n");
  process.exit(1);
}
