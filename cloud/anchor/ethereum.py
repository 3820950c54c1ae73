"""web3, eth-account and eth-tester, imported so that the interpreter's recursion limit stays as it was.

py_ecc (imported by eth-account and web3) raises the recursion limit to 100,000 when it loads. With
that limit the C JSON parser no longer guards its own stack, and a 200 KB message of nested ``[``
segfaults the whole cloud process. Nothing CarbonLink does with these libraries recurses deeply
(no pairing precompiles), so the limit is put back; import them from here, never directly.
"""

from __future__ import annotations

import sys

_LIMIT = sys.getrecursionlimit()
try:
    from eth_account import Account
    from eth_account.signers.local import LocalAccount
    from eth_tester.exceptions import TransactionFailed
    from web3 import AsyncHTTPProvider, AsyncWeb3
    from web3.exceptions import (
        ContractCustomError,
        ContractLogicError,
        TimeExhausted,
        TransactionNotFound,
        Web3Exception,
    )
finally:
    sys.setrecursionlimit(_LIMIT)

__all__ = ["Account", "AsyncHTTPProvider", "AsyncWeb3", "ContractCustomError", "ContractLogicError", "LocalAccount",
           "TimeExhausted", "TransactionFailed", "TransactionNotFound", "Web3Exception"]
