"""One simulated month of one organisation, built once for the accounts and report tests."""

from __future__ import annotations

import pytest

from carbonlink.cloud.carbon.accounts import Accounts
from carbonlink.cloud.carbon.build import Organisation, build_accounts
from tests.cloud.carbon.simdata import month_org

AS_OF = "2023-04-01T00:00:00+08:00"


@pytest.fixture(scope="session")
def march_org() -> Organisation:
    return month_org()


@pytest.fixture(scope="session")
def march(march_org: Organisation) -> Accounts:
    return build_accounts(march_org, kind="monthly", year=2023, month=3, as_of=AS_OF)
