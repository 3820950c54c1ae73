// Only used to run a local JSON-RPC node for tests (`npx hardhat node`); contracts are compiled by
// compile.mjs with the pinned solc, not by hardhat.
module.exports = {
  networks: { hardhat: { chainId: 31337, hardfork: "cancun" } },
};
