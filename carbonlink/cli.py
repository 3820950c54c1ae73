"""The `carbonlink` command: one entry point, a group per role, each imported only when it runs.

The root knows its groups by name, help text and the extra each needs (see ``carbonlink.commands.lazy``),
so ``carbonlink --help`` imports none of them and a gateway with only the ``edge`` extra runs
``carbonlink edge run`` without the cloud's or the chain's libraries.
"""

from __future__ import annotations

from typing import Annotated

import typer

from carbonlink import __version__
from carbonlink.commands.lazy import Lazy, lazy_typer

GROUPS: dict[str, Lazy] = {
    "demo": Lazy("carbonlink.commands.demo:app", "Simulators, broker, cloud and an edge agent together, with a "
                 "live dashboard.", ("edge", "cloud", "chain", "sim")),
    "edge": Lazy("carbonlink.commands.edge:edge_app", "The gateway agent: run it, check its config.", ("edge",)),
    "cloud": Lazy("carbonlink.commands.cloud:cloud_app", "The cloud: ingest, storage, API, dashboard, users.",
                  ("cloud",)),
    "provision": Lazy("carbonlink.commands.provision:app", "Installers: claim a gateway, register devices, "
                      "write its config.", ()),
    "sim": Lazy("carbonlink.commands.sim:sim_app", "Simulated devices speaking the real protocols.", ("sim",)),
    "hj212": Lazy("carbonlink.commands.hj212:app", "HJ 212: decode, check and build packets.", ()),
    "anchor": Lazy("carbonlink.commands.anchor:anchor_app", "Anchor committed readings on chain: one Merkle root "
                   "per site window.", ("cloud", "chain")),
    "verify": Lazy("carbonlink.commands.anchor:verify_app", "Proof bundles: prove a reading, check a bundle "
                   "against a chain node.", ("cloud", "chain")),
    "rules": Lazy("carbonlink.commands.rules:app", "Rules: validate, list and show rule sets; push them to "
                  "gateways; alerts and silences.", ()),
    "carbon": Lazy("carbonlink.commands.carbon:app", "Carbon accounting: formulas, accounts, reports.", ()),
    "ml": Lazy("carbonlink.commands.ml:app", "The anomaly model: train on simulated faults, evaluate, inspect, "
               "ship, back-test.", ("ml",)),
    "faults": Lazy("carbonlink.commands.faults.cli:app", "The fault lab: kill, cut and restart real "
                   "processes; count what was lost.", ("edge", "cloud", "sim")),
}

app = lazy_typer("CarbonLink: measure, report and verify carbon from field devices.", GROUPS)


def _version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="print the version and exit")] = False) -> None:
    """CarbonLink: measure, report and verify carbon from field devices."""


def main() -> None:
    app(prog_name="carbonlink")


if __name__ == "__main__":
    main()
