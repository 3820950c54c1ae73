// Independent check of CarbonLink proofs with OpenZeppelin's own StandardMerkleTree.
// stdin: {"types": [...], "root": "0x..", "value": [...], "proof": ["0x.."], "values": [[...], ...]?}
// stdout: {"verified": bool, "root": "0x.." | null, "proof": ["0x.."] | null}
// With "values", the tree is rebuilt from all leaves so its root and proof can be compared with ours.
import { StandardMerkleTree } from "@openzeppelin/merkle-tree";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const req = JSON.parse(input);
const out = { verified: StandardMerkleTree.verify(req.root, req.types, req.value, req.proof), root: null, proof: null };
if (req.values) {
  const tree = StandardMerkleTree.of(req.values, req.types);
  out.root = tree.root;
  out.proof = tree.getProof(req.value);
}
process.stdout.write(JSON.stringify(out) + "\n");
