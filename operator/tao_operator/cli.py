"""`tao`: run a TAOJob on this machine (`tao run`), or check one (`tao validate`)."""

from __future__ import annotations

import argparse
import sys

from tao_operator.api import SpecError, load_taojob_file


def _cmd_validate(args: argparse.Namespace) -> int:
    job = load_taojob_file(args.file)
    print(f"{args.file}: valid TAOJob {job.metadata.namespace}/{job.metadata.name}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from tao_operator import local

    job = load_taojob_file(args.file)
    if args.rounds is not None:
        job.spec.rounds = args.rounds
    try:
        report = local.run_local(job, fresh=args.fresh)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command to continue from the last complete stage", file=sys.stderr)
        return 130
    except local.RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print()
    print(local.format_table(report))
    print()
    print(local.describe_champion(report))
    print(f"report: {local.RunLayout(report['runUri']).report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tao", description="Tune an LLM on its own unlabeled prompts (TAO).")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a TAOJob on this machine, stage by stage (resumable)")
    run.add_argument("file", help="TAOJob manifest (YAML)")
    run.add_argument("--fresh", action="store_true", help="delete this job's earlier run artifacts and start over")
    run.add_argument("--rounds", type=int, help="override spec.rounds (e.g. to add rounds to a finished run)")
    run.set_defaults(func=_cmd_run)

    validate = sub.add_parser("validate", help="check a TAOJob manifest and name every invalid field")
    validate.add_argument("file")
    validate.set_defaults(func=_cmd_validate)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (SpecError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
