"""The ``fastmlp`` command line."""

import argparse
import sys


def build_parser():
    parser = argparse.ArgumentParser(prog="fastmlp", description="Fast JIT-compiled MLPs for CPUs.")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="train on built-in data (spiral, digits) and report accuracy",
                               description="Train on the 3-class spiral and the shipped digits set; "
                                           "prints per-epoch progress and the final accuracy.")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--threads", type=int, default=None,
                      help="threads for numba and BLAS together (default: all cores)")
    return parser


def _version():
    from fastmlp import __version__

    return f"fastmlp {__version__}"


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo":
        from fastmlp.demo import run_demo
        from fastmlp.threads import set_num_threads

        if args.threads is not None:
            try:
                set_num_threads(args.threads)
            except ValueError as exc:
                parser.error(str(exc))
        run_demo(seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
