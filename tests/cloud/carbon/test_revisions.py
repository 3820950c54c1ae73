"""Late data change the accounts: the revision lists exactly the figures that moved, before and after."""

from __future__ import annotations

from dataclasses import replace

import pytest

from carbonlink.cloud.carbon.accounts import Accounts
from carbonlink.cloud.carbon.build import Organisation, StackInput, build_accounts
from carbonlink.cloud.carbon.cems import HourValue
from carbonlink.cloud.carbon.errors import CarbonInputError
from carbonlink.cloud.carbon.revisions import diff_accounts
from tests.cloud.carbon.conftest import AS_OF
from tests.cloud.carbon.simdata import MARCH


def test_a_late_hour_changes_its_day_and_the_total_only(march: Accounts, march_org: Organisation) -> None:
    assert diff_accounts(march, march) == []
    # hour 30 (2023-03-02 06:00 local) was invalid; its data arrive late and valid
    (stack,) = march_org.stacks
    hour = MARCH + 30 * 3600
    fixed = {t: ({p: HourValue(v.value, True, v.readings) for p, v in row.items()} if t == hour else row)
             for t, row in stack.hours.items()}
    late = replace(march_org, stacks=[StackInput(stack.config, stack.site, fixed)])
    after = build_accounts(late, kind="monthly", year=2023, month=3, as_of=AS_OF)
    changes = diff_accounts(march, after)
    periods = {c.period for c in changes}
    assert periods == {"2023-03-02", "2023-03"}  # the day it sits in and the month above it
    fields = {(c.period, c.source, c.field) for c in changes}
    assert ("2023-03-02", "", "coverage.valid") in fields and ("2023-03", "", "coverage.substituted") in fields
    cov = next(c for c in changes if c.period == "2023-03" and c.field == "coverage.valid" and not c.source)
    assert (cov.before, cov.after) == ("741", "742")
    assert diff_accounts(march, after) == changes  # the same two versions, the same revision


def test_only_versions_of_the_same_report_compare(march: Accounts) -> None:
    with pytest.raises(CarbonInputError):
        diff_accounts(march, replace(march, month=4))
