"""`carbonlink sim …`: simulated devices; each simulator's module is imported only when it runs."""

from __future__ import annotations

from carbonlink.commands.lazy import Lazy, lazy_typer

sim_app = lazy_typer("Simulated devices speaking the real protocols.", {
    "cems": Lazy("carbonlink.simulators.cems_cli:app", "A CEMS stack over Modbus TCP, OPC-UA and HJ 212, faults "
                 "on demand.", ("sim",)),
    "inverter": Lazy("carbonlink.simulators.sunspec_cli:app", "SunSpec inverters over Modbus TCP.", ("sim",)),
    "fleet": Lazy("carbonlink.simulators.fleet_cli:app", "N CEMS stacks and N inverters on consecutive ports.",
                  ("sim",)),
    "forest": Lazy("carbonlink.simulators.forest_cli:forest", "A forest plot's BTHome adverts (trees, soil, "
                   "dendrometers).", ()),
})
