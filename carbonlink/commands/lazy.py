"""Command groups that are imported only when they run.

A gateway installs only the ``edge`` extra; the cloud's and the chain's libraries are not there, and
importing them for ``--help`` would cost seconds and tens of megabytes anyway. So a group is known by
name, help text and the extra it needs, and its module is imported when the group is invoked. A group
whose extra is missing answers with the ``pip install`` line that adds it.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any, ClassVar

import typer
from typer.core import TyperGroup

# typer 0.2x carries its own copy of click; commands must be built from that copy, so they are typed loosely.
Command = Any

DIST = "carbonlink"
# A module that each extra brings (probed with find_spec, which imports nothing).
EXTRA_PROBES: dict[str, tuple[str, ...]] = {
    "edge": ("pymodbus", "asyncua"),
    "cloud": ("fastapi", "uvicorn", "aiosqlite", "asyncpg"),
    "chain": ("web3", "eth_account"),
    "sim": ("pymodbus", "asyncua"),
    "ml": ("onnxruntime", "numpy", "sklearn", "skl2onnx"),
    "edge-ml": ("onnxruntime", "numpy"),
    "train": ("sklearn", "skl2onnx"),
}


def _missing(extras: tuple[str, ...]) -> str | None:
    for extra in extras:
        for module in EXTRA_PROBES.get(extra, ()):
            try:
                if importlib.util.find_spec(module) is None:
                    return module
            except (ValueError, ImportError):  # blocked (None in sys.modules) or broken
                return module
    return None


@dataclass(frozen=True)
class Lazy:
    target: str  # "package.module:attribute", a typer.Typer or a click command
    help: str
    extras: tuple[str, ...] = ()  # what `pip install 'carbonlink[...]'` must name for it to import


def load(name: str, spec: Lazy) -> Command:
    missing = _missing(spec.extras)
    if missing is not None:
        return _needs_extra(name, spec, missing)
    module_name, _, attr = spec.target.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing == DIST or not spec.extras:
            raise
        return _needs_extra(name, spec, missing)
    if isinstance(obj, typer.Typer):
        return typer.main.get_command(obj)
    if callable(obj) and not hasattr(obj, "invoke"):  # a plain function: one command of that name
        app = typer.Typer(add_completion=False)
        app.command(name=name)(obj)
        return typer.main.get_command(app)
    return obj


def _needs_extra(name: str, spec: Lazy, missing: str) -> Command:
    extras = ",".join(spec.extras)
    message = (f"`carbonlink {name}` needs the '{extras}' extra (the module {missing!r} is not installed).\n"
               f"Install it with: pip install 'carbonlink[{extras}]'")
    app = typer.Typer(add_completion=False)

    @app.command(name=name, help=spec.help, add_help_option=False,
                 context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def needs_extra() -> None:
        typer.echo(message, err=True)
        raise typer.Exit(2)

    return typer.main.get_command(app)


class LazyGroup(TyperGroup):
    """A group whose sub-commands are ``Lazy`` entries (the class's ``lazy``), loaded on first use."""

    lazy: ClassVar[dict[str, Lazy]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Plain help formatting: the rich one asks every sub-command for its help, importing them all.
        kwargs["rich_markup_mode"] = None
        super().__init__(*args, **kwargs)

    def list_commands(self, ctx: Any) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: Any, cmd_name: str) -> Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        spec = self.lazy.get(cmd_name)
        if spec is None:
            return None
        command = load(cmd_name, spec)
        self.commands[cmd_name] = command
        return command

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """The listing from the registry's help texts: --help imports none of the groups."""
        rows = [(name, self.lazy[name].help if name in self.lazy else (self.commands[name].get_short_help_str()))
                for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def lazy_typer(help: str, lazy: dict[str, Lazy]) -> typer.Typer:
    """A typer app whose sub-commands are the ``lazy`` entries; add a callback for options of its own."""
    group = type("Lazy" + "".join(w.title() for w in lazy), (LazyGroup,), {"lazy": lazy})
    app = typer.Typer(cls=group, help=help, no_args_is_help=True, add_completion=False,
                      context_settings={"help_option_names": ["-h", "--help"]})
    app.callback()(_no_options)  # typer needs a callback or a command to build a group
    return app


def _no_options() -> None:
    pass
