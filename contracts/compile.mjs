// Compile the registry with the pinned solc from npm (standard JSON, explicit evmVersion) and write
// build/<Contract>.json. `node compile.mjs --check` recompiles and fails if the committed artifacts differ.
import { readFileSync, writeFileSync, mkdirSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const solc = require("solc");

const SOLC_VERSION = "0.8.28"; // pinned: must match package.json and the pragma
const EVM_VERSION = "cancun"; // supported by py-evm (eth-tester) and hardhat 2; solc's default moves on
const CONTRACTS = ["AnchorRegistry"];

const here = dirname(fileURLToPath(import.meta.url));
const buildDir = join(here, "build");

if (!solc.version().startsWith(SOLC_VERSION + "+")) {
  console.error(`solc ${solc.version()} is installed, ${SOLC_VERSION} is pinned: run npm ci --prefix contracts`);
  process.exit(2);
}

const sources = {};
for (const name of CONTRACTS) {
  const path = `src/${name}.sol`;
  sources[path] = { content: readFileSync(join(here, path), "utf8") };
}

const input = {
  language: "Solidity",
  sources,
  settings: {
    evmVersion: EVM_VERSION,
    optimizer: { enabled: true, runs: 200 },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "metadata"] } },
  },
};

// Imports such as "@openzeppelin/contracts/..." resolve from node_modules.
function findImports(path) {
  const candidate = join(here, "node_modules", path);
  if (existsSync(candidate)) return { contents: readFileSync(candidate, "utf8") };
  return { error: `import ${path} not found (run npm ci --prefix contracts)` };
}

const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);

const check = process.argv.includes("--check");
let differ = 0;
mkdirSync(buildDir, { recursive: true });
for (const name of CONTRACTS) {
  const out = output.contracts[`src/${name}.sol`][name];
  const artifact = {
    contractName: name,
    sourceName: `src/${name}.sol`,
    compiler: { name: "solc", version: solc.version(), evmVersion: EVM_VERSION, optimizer: input.settings.optimizer },
    abi: out.abi,
    bytecode: "0x" + out.evm.bytecode.object,
    deployedBytecode: "0x" + out.evm.deployedBytecode.object,
    metadata: out.metadata,
  };
  const text = JSON.stringify(artifact, null, 2) + "\n";
  const file = join(buildDir, `${name}.json`);
  if (check) {
    const committed = existsSync(file) ? readFileSync(file, "utf8") : "";
    if (committed !== text) {
      console.error(`${file} differs from a fresh compile: run node contracts/compile.mjs and commit build/`);
      differ += 1;
    } else {
      console.log(`${name}: committed artifact matches solc ${solc.version()} (${EVM_VERSION})`);
    }
  } else {
    writeFileSync(file, text);
    console.log(`${name}: wrote build/${name}.json (solc ${solc.version()}, ${EVM_VERSION})`);
  }
}
process.exit(differ ? 1 : 0);
