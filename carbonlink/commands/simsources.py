"""Simulated sources an edge agent can read when its configuration asks for them.

The edge never imports a simulator (design.md layers); the command layer, which may import both,
plugs the simulators in. ``install()`` is idempotent and is called by every command that runs an
agent (``edge run``, ``demo``, the fault lab's gateway process).
"""

from __future__ import annotations

from carbonlink.edge.drivers import ble


def _forest(settings: ble.BleBthomeDevice, keys: dict[str, bytes | None]) -> ble.AdvertSource:
    from carbonlink.simulators.forest import Forest, Tree

    trees = [Tree(s.mac.upper(), s.id, keys[s.mac.upper()], s.dendrometer, seed=i)
             for i, s in enumerate(settings.sensors)]
    # One plot for the driver's lifetime: a new session continues it (counters keep rising).
    forest = Forest(trees, speed=settings.sim_speed, repeats=settings.sim_repeats)
    return lambda: forest.adverts(settings.poll_interval_s)


def install() -> None:
    ble.ADVERT_SOURCES.setdefault("simulator", _forest)
