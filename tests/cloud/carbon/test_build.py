"""A simulated month of one organisation, accounted in Python and compared with the simulators' truth."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from carbonlink.cloud.carbon.accounts import Accounts, accounts_from_json, accounts_to_json
from carbonlink.cloud.carbon.build import Organisation, build_accounts
from carbonlink.cloud.carbon.errors import CarbonInputError
from carbonlink.simulators.cems import CemsStack
from carbonlink.simulators.inverter import SolarInverter
from carbonlink.simulators.meter import ElectricityMeter
from tests.cloud.carbon.conftest import AS_OF
from tests.cloud.carbon.simdata import MARCH, month_org

END = MARCH + 31 * 86400
CN_2023 = 0.5306


def test_totals_are_the_sums_of_the_days_and_balances_follow(march: Accounts) -> None:
    tot = march.total
    assert [p.period for p in march.periods][:2] == ["2023-03-01", "2023-03-02"] and len(march.periods) == 31
    for key in ("scope1_t", "scope2_t", "sinks_t", "avoided_t", "mwh_generated", "mwh_bought"):
        assert getattr(tot, key) == sum((getattr(p, key) for p in march.periods), D(0)), key
    assert tot.net_t == tot.scope1_t + tot.scope2_t - tot.sinks_t
    assert tot.allowance_balance_t == D(80_000) - tot.scope1_t  # the quota covers scope 1
    assert tot.coverage.as_dict() == {"valid": 741, "substituted": 3, "missing": 0, "hours": 744}
    # green certificates: whole MWh issued day by day, the remainder carried, nothing lost or made up
    assert D(tot.certificates) + tot.certificate_carry_mwh == tot.mwh_generated
    assert tot.certificates == int(tot.mwh_generated)


def test_each_source_matches_what_its_simulator_knows(march: Accounts) -> None:
    by = {s.source_id: s for s in march.total.sources}
    stack = CemsStack(seed=7, clock=lambda: MARCH)
    truth = stack.truth(MARCH, END, 600)
    assert float(by["stack-1"].t_co2e) == pytest.approx(truth["co2_stack_t"], rel=5e-3)
    assert float(by["stack-1"].detail["co2_fuel_t"]) == pytest.approx(truth["co2_fuel_t"], rel=1e-4)
    inv = SolarInverter(seed=5, clock=lambda: MARCH)
    mwh = inv.energy_between(MARCH, END) / 1e6
    assert float(march.total.mwh_generated) == pytest.approx(mwh, abs=1e-4)  # whole-Wh counter readings
    assert float(by["inverter-1"].t_co2e) == pytest.approx(mwh * CN_2023, rel=1e-4)
    meter = ElectricityMeter(seed=3, clock=lambda: MARCH)
    bought = meter.energy_between(MARCH, END) / 1000
    assert float(march.total.mwh_bought) == pytest.approx(bought, rel=1e-6)
    assert float(by["meter-1"].t_co2e) == pytest.approx(bought * CN_2023, rel=1e-5)
    # natural gas without CEMS counts by calculation: 31 days × 1.5 × 10⁴ Nm³
    assert by["boiler-2/cn_natural_gas"].detail["quantity"] == "46.5"
    assert by["plot-1"].t_co2e > 0 and by["plot-1"].low_t < by["plot-1"].t_co2e < by["plot-1"].high_t  # type: ignore[operator]


def test_same_inputs_same_bytes_and_json_round_trips(march: Accounts, march_org: Organisation) -> None:
    again = build_accounts(march_org, kind="monthly", year=2023, month=3, as_of=AS_OF)
    assert accounts_to_json(again) == accounts_to_json(march)
    assert accounts_from_json(accounts_to_json(march)) == march
    factors = {f.key for f in march.factors}
    assert {"CN/average/2023", "coal_boiler", "cn_natural_gas/ncv"} <= factors
    assert {m.name for m in march.methods} >= {"cems", "substitution", "fuel", "solar", "scope2", "forest"}


def test_a_year_without_a_grid_factor_stops_the_accounts() -> None:
    with pytest.raises(CarbonInputError, match="2024"):
        build_accounts(month_org(days=1, start=1_709_222_400), kind="monthly", year=2024, month=3,
                       as_of="2024-04-01T00:00:00+08:00")


@pytest.mark.parametrize("bad, where", [
    (b'{"organisation": 1}', "accounts JSON"),
    (b"not json", "accounts JSON"),
])
def test_bad_accounts_json_names_the_field(bad: bytes, where: str) -> None:
    with pytest.raises(CarbonInputError) as err:
        accounts_from_json(bad)
    assert where in err.value.input
