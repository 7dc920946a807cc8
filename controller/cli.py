"""`comptroller` command line: one thin dispatcher over the front doors.

Each subcommand lives in its own module exposing `configure(parser)` and `run(args) -> int`;
modules are imported lazily so `comptroller check` never loads kopf, uvicorn or the client.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("controller.check", "evaluate manifests offline against policy files (for CI)"),
    "fix": ("controller.fix", "write each denied manifest's fix into its file (comments and layout kept)"),
    "webhook": ("controller.webhook.server", "serve the admission webhook over HTTPS"),
    "operator": ("controller.operator.main", "run the reconcile loops (metering, expiry, idle, audit)"),
    "report": ("controller.report", "showback: GPU-hours, cost and budget use by team and cost center"),
    "wake": ("controller.wake", "restore a workload that was scaled to zero"),
    "certs": ("controller.certs", "create the webhook CA and serving certificate, patch caBundle"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comptroller", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(command)
        command.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Import only the module of the command asked for, so `check` stays light and fast.
    if argv and argv[0] in COMMANDS and argv[0] not in ("-h", "--help"):
        name = argv[0]
        module = importlib.import_module(COMMANDS[name][0])
        parser = argparse.ArgumentParser(prog=f"comptroller {name}", description=COMMANDS[name][1])
        module.configure(parser)
        return int(module.run(parser.parse_args(argv[1:])) or 0)
    build_parser().parse_args(argv)
    return 2


if __name__ == "__main__":
    sys.exit(main())
