"""``compresskit demo``: the embedded default — MiniLM-L6 teacher, SST-2, Kronecker student, on a CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from compresskit.commands import Command, CommandContext
from compresskit.commands.run import add_run_arguments, run_config
from compresskit.errors import ConfigError

#: The shipped demo config, found beside the package in a source checkout or installed with it.
DEMO_CONFIG = "demo-minilm-sst2.toml"


def demo_config_path() -> Path:
    """Path of the demo config: ``configs/`` of the checkout, else the copy shipped in the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "configs" / DEMO_CONFIG, here.parent / "configs" / DEMO_CONFIG):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"{DEMO_CONFIG} was not found beside this installation ({here.parents[1] / 'configs'}); run from a "
        "source checkout (pip install -e .) or pass the config to `compresskit run`."
    )


class DemoCommand(Command):
    """Run the shipped demo strategy (configs/demo-minilm-sst2.toml)."""

    name = "demo"
    help = "run the embedded demo: MiniLM-L6 fine-tuned on SST-2, Kronecker-compressed, two-stage KD (CPU)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run_arguments(parser)

    def run(self, args: argparse.Namespace, context: CommandContext) -> int:
        return run_config(demo_config_path(), args, context)
