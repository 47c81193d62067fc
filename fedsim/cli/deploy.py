"""`fedleak deploy`: the `simulate` federation on Flower's deployment runtime, as separate processes on this machine.

A SuperLink and ``--supernodes`` SuperNodes (TLS and SuperNode authentication on, credentials generated for the
run), the app through ``flwr run``, the same run directory as ``simulate``, everything stopped at the end (also on
failure and Ctrl-C). The multi-host version of the same recipe is in the README ("Past one machine").
"""

from __future__ import annotations

import argparse
import signal
import sys

from fedsim.cli.simulate import check_inputs
from fedsim.settings import Settings, add_options, from_args, positive_int

HELP = "run the federation on Flower's deployment runtime: a SuperLink and N SuperNodes as local processes"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("deploy", help=HELP, description=HELP + " (TLS and SuperNode authentication on). Takes "
                            "the options of `fedleak simulate`; --supernodes replaces --clients.")
    add_options(parser, Settings, skip=("clients",), defaults={"out": "runs/deploy"})
    g = parser.add_argument_group("deployment")
    g.add_argument("--supernodes", type=positive_int, default=2, metavar="N",
                   help="SuperNodes (clients), one partition each (default: 2)")
    g.add_argument("--port", type=_port, default=0, metavar="P",
                   help="SuperLink on port P, SuperNode i's runtime API on P+1+i (default: free ports)")
    g.add_argument("--keep-certs", action="store_true",
                   help="keep the generated certificates, keys, Flower's state and process logs (their directory "
                        "is printed; kept anyway when the run fails)")
    parser.add_argument("--verbose", action="store_true", help="show Flower's and Ray's own log lines")
    parser.set_defaults(func=run)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65000:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65000 (0: free ports), got {text!r}")
    return value


def _terminate(signum: int, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM/SIGHUP tear the deployment down like Ctrl-C


def run(args: argparse.Namespace) -> int:
    from fedsim.deploy import run as deploy  # Flower's processes: loaded only by the command that starts them

    settings = from_args(Settings, args, clients=args.supernodes)
    check_inputs(settings)
    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        result = deploy.run(settings, args.supernodes, port=args.port, keep=args.keep_certs, verbose=args.verbose)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if result["ok"]:
        return 0
    summary = result["summary"]
    sys.stderr.write(f"fedleak deploy: run {result['run_id']} ended {result['status']}"
                     f"{' (' + result['details'] + ')' if result['details'] else ''}, run directory status "
                     f"{summary.get('status', 'missing')}; logs in {result.get('kept', '?')}/logs\n")
    return 1
