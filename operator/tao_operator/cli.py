"""`tao`: run a TAOJob on this machine (`tao run`), check one (`tao validate`, `tao preflight`), or run the operator."""

from __future__ import annotations

import argparse
import sys

from tao_operator.api import SpecError, load_taojob_file
from tao_operator.report import describe_champion, format_preflight, format_table
from tao_trainer.layout import RunLayout


def _cmd_validate(args: argparse.Namespace) -> int:
    job = load_taojob_file(args.file)
    print(f"{args.file}: valid TAOJob {job.metadata.namespace}/{job.metadata.name}")
    for warning in job.spec.evaluation.warnings():
        print(f"warning: {warning}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from tao_operator import local

    job = load_taojob_file(args.file)
    for warning in job.spec.evaluation.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    if args.rounds is not None:
        if job.spec.continuous is not None:
            print(
                "error: --rounds is for a fixed number of rounds; this TAOJob is continuous: use --cycles",
                file=sys.stderr,
            )
            return 2
        job.spec.rounds = args.rounds
    if args.cycles is not None:
        if job.spec.continuous is None:
            print(
                "error: --cycles needs spec.continuous (interval, minNewPrompts); use --rounds otherwise",
                file=sys.stderr,
            )
            return 2
        job.spec.continuous.max_rounds = args.cycles
    elif job.spec.continuous is not None and job.spec.continuous.max_rounds is None:
        print(
            "continuous: runs until interrupted (Ctrl-C; the same command continues); --cycles N stops after N rounds",
            file=sys.stderr,
        )
    try:
        report = local.run_local(job, fresh=args.fresh)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command to continue from the last complete stage", file=sys.stderr)
        return 130
    except local.RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print()
    print(format_table(report))
    print()
    print(describe_champion(report))
    print(f"report: {RunLayout(report['runUri']).report}")
    return 0


def _cmd_preflight(args: argparse.Namespace) -> int:
    from tao_operator import local

    job = load_taojob_file(args.file)
    if args.prompts is not None:
        job.spec.preflight.prompts = args.prompts
    result, report = local.preflight_local(job)
    if report is None:
        print(f"error: preflight failed: {result.message}", file=sys.stderr)
        return 1
    print(format_preflight(report))
    return 0 if report["signal"] else 2


def _cmd_crd(args: argparse.Namespace) -> int:
    from tao_operator import crd

    if args.check:
        diff = crd.diff_against(args.check)
        if diff:
            sys.stdout.write(diff)
            print(f"{args.check} differs from api.py: run `tao crd --output {args.check}`", file=sys.stderr)
            return 1
        print(f"{args.check}: up to date")
        return 0
    text = crd.render_crd_yaml()
    if args.output:
        with open(args.output, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_operator(args: argparse.Namespace) -> int:
    """Run the kopf operator (in a cluster: the Deployment's command)."""
    import asyncio
    import os

    import kopf

    from tao_operator.builders import OperatorDefaults
    from tao_operator.handlers import build_registry

    fields = OperatorDefaults.model_fields
    defaults = OperatorDefaults.model_validate(
        {name: os.environ[f"TAO_{name.upper()}"] for name in fields if f"TAO_{name.upper()}" in os.environ}
    )
    namespaces: list[str] = [n for n in (args.namespace or []) if n]
    asyncio.run(
        kopf.operator(
            registry=build_registry(
                defaults,
                metrics_port=int(port) if (port := os.environ.get("TAO_METRICS_PORT", "9090")) else None,
            ),
            clusterwide=not namespaces,
            namespaces=namespaces,  # empty with clusterwide: kopf's own default, ()
            liveness_endpoint=args.liveness,
            standalone=True,
        )
    )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    # Lazy: the operator image has no torch; `tao serve` needs the `train` extra.
    from tao_trainer.serve import serve_cli

    return serve_cli(
        args.model,
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name,
        api_key=args.api_key,
        default_max_tokens=args.max_tokens,
        quiet=args.quiet,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tao", description="Tune an LLM on its own unlabeled prompts (TAO)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a TAOJob on this machine, stage by stage (resumable)")
    run.add_argument("file", help="TAOJob manifest (YAML)")
    run.add_argument(
        "--fresh", action="store_true", help="delete this job's earlier run artifacts and start over"
    )
    run.add_argument("--rounds", type=int, help="override spec.rounds (e.g. to add rounds to a finished run)")
    run.add_argument(
        "--cycles",
        type=int,
        help="continuous TAOJobs: stop after this many rounds (each later round waits for minNewPrompts new prompts)",
    )
    run.set_defaults(func=_cmd_run)

    preflight = sub.add_parser(
        "preflight",
        help="generate and score a sample of prompts: can the scorers tell candidates apart? (exit 2: no signal)",
    )
    preflight.add_argument("file", help="TAOJob manifest (YAML)")
    preflight.add_argument("--prompts", type=int, help="override spec.preflight.prompts (the sample size)")
    preflight.set_defaults(func=_cmd_preflight)

    validate = sub.add_parser("validate", help="check a TAOJob manifest and name every invalid field")
    validate.add_argument("file")
    validate.set_defaults(func=_cmd_validate)

    crd = sub.add_parser("crd", help="print the TAOJob CRD generated from the API models")
    crd_to = crd.add_mutually_exclusive_group()
    crd_to.add_argument("--output", metavar="FILE", help="write it to FILE instead of stdout")
    crd_to.add_argument("--check", metavar="FILE", help="exit 1 with a diff if FILE differs from it")
    crd.set_defaults(func=_cmd_crd)

    op = sub.add_parser(
        "operator", help="run the Kubernetes operator (reads TAO_TRAINER_IMAGE, TAO_SERVING_IMAGE, ...)"
    )
    op.add_argument(
        "--namespace", "-n", action="append", help="watch only this namespace (repeatable); default: all"
    )
    op.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint URL")
    op.set_defaults(func=_cmd_operator)

    serve = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API (transformers; for local runs and tests)",
    )
    serve.add_argument("model", metavar="MODEL_URI", help="model directory: a path, file://, s3:// or hf://")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default: 8000)")
    serve.add_argument("--served-model-name", help="model name in requests (default: the directory name)")
    serve.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on /v1 (default: $TAO_SERVE_API_KEY; prefer the variable)",
    )
    serve.add_argument(
        "--max-tokens", type=int, default=256, help="completion length when a request sets none"
    )
    serve.add_argument("--quiet", action="store_true", help="do not log requests to stderr")
    serve.set_defaults(func=_cmd_serve)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (SpecError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
