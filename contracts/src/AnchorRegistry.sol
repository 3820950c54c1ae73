// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @title AnchorRegistry: one Merkle root per window of committed CarbonLink readings.
/// @notice A window is a site, a time range [startMs, endMs) and a part number (readings that
/// arrive after a window was anchored go into the next part). Its root is written once: the
/// registry refuses to anchor the same window twice. Gas per anchor does not depend on how many
/// readings the root covers, only the fixed-size record is stored.
/// Leaves follow OpenZeppelin's StandardMerkleTree: keccak256(bytes.concat(keccak256(abi.encode(...))))
/// with sorted pairs, so `verifyLeaf` and any standard tool accept the same proofs.
contract AnchorRegistry is AccessControl, Pausable {
    /// @notice Role of the anchoring service: the only account that writes roots.
    bytes32 public constant ANCHORER_ROLE = keccak256("ANCHORER_ROLE");

    struct Window {
        bytes32 root;
        uint64 startMs;
        uint64 endMs;
        uint64 readingCount;
        uint64 anchoredBlock;
        uint32 part;
    }

    mapping(bytes32 windowId => Window) private _windows;

    event Anchored(
        bytes32 indexed windowId,
        bytes32 indexed root,
        string site,
        uint64 startMs,
        uint64 endMs,
        uint32 part,
        uint64 readingCount
    );
    event AnchorerRotated(address indexed previous, address indexed next);

    error WindowAlreadyAnchored(bytes32 windowId, bytes32 root);
    error InvalidWindow(uint64 startMs, uint64 endMs);
    error EmptyWindow();
    error ZeroRoot();
    error UnknownWindow(bytes32 windowId);

    constructor(address admin, address anchorer) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(ANCHORER_ROLE, anchorer);
    }

    /// @notice The identifier of a window: keccak256(abi.encode(site, startMs, endMs, part)).
    function windowId(string calldata site, uint64 startMs, uint64 endMs, uint32 part)
        public
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(site, startMs, endMs, part));
    }

    /// @notice Record the Merkle root of one window; reverts if that window already has a root.
    function anchor(
        string calldata site,
        uint64 startMs,
        uint64 endMs,
        uint32 part,
        bytes32 root,
        uint64 readingCount
    ) external onlyRole(ANCHORER_ROLE) whenNotPaused returns (bytes32 id) {
        if (endMs <= startMs) revert InvalidWindow(startMs, endMs);
        if (readingCount == 0) revert EmptyWindow();
        if (root == bytes32(0)) revert ZeroRoot();
        id = windowId(site, startMs, endMs, part);
        Window storage w = _windows[id];
        if (w.root != bytes32(0)) revert WindowAlreadyAnchored(id, w.root);
        _windows[id] = Window(root, startMs, endMs, readingCount, uint64(block.number), part);
        emit Anchored(id, root, site, startMs, endMs, part, readingCount);
    }

    /// @notice The stored record of a window (root is zero if it was never anchored).
    function getWindow(bytes32 id) external view returns (Window memory) {
        return _windows[id];
    }

    /// @notice True if `leaf` is in the tree whose root was anchored for window `id`.
    function verifyLeaf(bytes32 id, bytes32 leaf, bytes32[] calldata proof) external view returns (bool) {
        bytes32 root = _windows[id].root;
        if (root == bytes32(0)) revert UnknownWindow(id);
        return MerkleProof.verifyCalldata(proof, root, leaf);
    }

    /// @notice Replace the anchoring service's account in one step (admin only).
    function rotateAnchorer(address previous, address next) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _revokeRole(ANCHORER_ROLE, previous);
        _grantRole(ANCHORER_ROLE, next);
        emit AnchorerRotated(previous, next);
    }

    function pause() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _pause();
    }

    function unpause() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _unpause();
    }
}
