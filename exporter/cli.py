"""`whoasr-exporter` command line: serve, check-config, simulate, demo, probe, render, report, capacity.

Exit codes: 0 success, 1 a probe or the run failed, 2 usage or config errors.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from exporter import __version__


def _cmd_check_config(args: argparse.Namespace) -> int:
    from exporter.config import load_config_or_report

    config = load_config_or_report(args.config)
    if config is None:
        return 2
    from exporter.probes.timestamp import upload_leak_warnings

    print(f"{args.config}: OK ({len(config.targets)} targets)")
    for line in upload_leak_warnings(config):
        print(f"{args.config}: {line}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from exporter import daemon

    return daemon.main(args.config, listen=args.listen, log_format=args.log_format, shard=args.shard)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from exporter import simulator

    return simulator.run(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from exporter import demo

    return demo.run(args)


def _cmd_render(args: argparse.Namespace) -> int:
    from exporter import render

    return render.run(args)


def _cmd_probe(args: argparse.Namespace) -> int:
    from exporter import probe_cli

    return probe_cli.run(args)


def _cmd_report(args: argparse.Namespace) -> int:
    from exporter import report_cli

    return report_cli.run(args)


def _cmd_capacity(args: argparse.Namespace) -> int:
    from exporter import capacity_cli

    return capacity_cli.run(args)


def build_parser(selected: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; `selected` names the subcommand whose own module is imported for its arguments."""
    parser = argparse.ArgumentParser(
        prog="whoasr-exporter",
        description="Prometheus exporter and synthetic prober for whoAsr speech-recognition servers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the exporter daemon")
    serve.add_argument("--config", required=True, help="config file (YAML)")
    serve.add_argument("--listen", help="HOST:PORT to serve on, overriding exporter.listen")
    serve.add_argument("--log-format", choices=["json", "console", "auto"],
                       help="override exporter.log_format (auto: console in a terminal)")
    serve.add_argument("--shard", metavar="I/N",
                       help="probe only the targets that hash to shard I of N (0-based), overriding exporter.shard")
    serve.set_defaults(func=_cmd_serve)

    check = commands.add_parser("check-config", help="validate a config file; exit 2 if it is invalid")
    check.add_argument("config", help="config file (YAML)")
    check.set_defaults(func=_cmd_check_config)

    simulate = commands.add_parser("simulate", help="run the built-in whoAsr simulator")
    _add_lazy_arguments(simulate, "exporter.simulator", selected == "simulate")
    simulate.set_defaults(func=_cmd_simulate)

    demo = commands.add_parser("demo", help="start a v1 and a v2 simulator and the exporter against them")
    demo.add_argument("--port", type=int, default=9877, help="exporter port (default 9877)")
    demo.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.set_defaults(func=_cmd_demo)

    render_cmd = commands.add_parser("render", help="write alert rules and dashboards from a config")
    _add_lazy_arguments(render_cmd, "exporter.render", selected == "render")
    render_cmd.set_defaults(func=_cmd_render)

    probe = commands.add_parser("probe", help="run probes once against a target and print the results")
    _add_lazy_arguments(probe, "exporter.probe_cli", selected == "probe")
    probe.set_defaults(func=_cmd_probe)

    report_cmd = commands.add_parser("report", help="summarise a period from Prometheus: uptime, resources, "
                                                    "models, probes, SLO budgets, alerts")
    _add_lazy_arguments(report_cmd, "exporter.report_cli", selected == "report")
    report_cmd.set_defaults(func=_cmd_report)

    capacity = commands.add_parser("capacity", help="find how many concurrent real-time streams a target serves")
    _add_lazy_arguments(capacity, "exporter.capacity_cli", selected == "capacity")
    capacity.set_defaults(func=_cmd_capacity)
    return parser


def _add_lazy_arguments(parser: argparse.ArgumentParser, module_name: str, selected: bool) -> None:
    """Lets a subcommand's own module define its arguments; imported only for the command being run."""
    import importlib

    if not selected:
        return
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name != module_name:
            raise
        return
    module.add_arguments(parser)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(selected).parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
