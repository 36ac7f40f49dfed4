"""`tao`: run a TAOJob on this machine (`tao run`), check one (`tao validate`, `tao preflight`), or run the operator."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tao_operator.api import SpecError, TAOJob, load_taojob_file
from tao_operator.exits import Exit
from tao_operator.report import describe_champion, format_preflight, format_table
from tao_trainer.layout import RunLayout

EXIT_CODES = """exit codes:
  0    done
  1    the run failed (a stage's error says why; completed stages are kept: run the same command to continue)
  2    usage: bad arguments, a missing or invalid manifest
  3    no signal: the scorer preflight found nothing to learn from (see `tao preflight FILE`)
  4    storage: unreachable endpoint, missing bucket, missing or refused credentials
  130  interrupted (the same command continues)
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tao-operator")
    except PackageNotFoundError:
        return "unknown"


def _json(doc: dict[str, Any]) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False))


def _fail(args: argparse.Namespace, code: Exit, message: str, **extra: Any) -> int:
    """An `error:` line on stderr; with `-o json`, the same as a JSON object on stdout."""
    print(f"error: {message}", file=sys.stderr)
    if getattr(args, "output", "text") == "json":
        _json({"ok": False, "exitCode": int(code), "error": message, **extra})
    return int(code)


def _load(args: argparse.Namespace) -> TAOJob:
    try:
        return load_taojob_file(args.file)
    except FileNotFoundError as e:
        raise SpecError([f"no such file: {e.filename}"], args.file) from e
    except IsADirectoryError as e:
        raise SpecError([f"a directory, not a manifest file: {e.filename}"], args.file) from e


def user_function_problems(job: TAOJob) -> list[str]:
    """What is wrong with the job's user reward functions (python and dotted-path scorers): a module that does
    not import, a factory that rejects its `args`, a signature that cannot take the call a run makes. They are
    imported here, as the score stage would import them; where the scorer implementations are not installed (the
    operator image), nothing is checked."""
    specs = [*job.spec.scoring.scorers, *(job.spec.evaluation.scorers or [])]
    user = [spec for spec in specs if spec.type == "python" or any(sep in spec.type for sep in ".:")]
    if not user:
        return []
    try:
        from tao_trainer.scorers import build_scorer
        from tao_trainer.scorers.function import FunctionScorer
    except ImportError:
        return []
    problems = []
    for spec in user:
        try:
            scorer = build_scorer(spec)
            if isinstance(scorer, FunctionScorer):
                scorer.check(None)
        except Exception as e:  # noqa: BLE001 - user code may raise anything while it is imported
            problems.append(str(e) if f"'{spec.name}'" in str(e) else f"scorer {spec.name!r}: {e}")
    return problems


def _cmd_validate(args: argparse.Namespace) -> int:
    job = _load(args)
    if problems := user_function_problems(job):
        return _fail(args, Exit.USAGE, f"{args.file}: " + "; ".join(problems), problems=problems)
    warnings = job.spec.evaluation.warnings()
    if args.output == "json":
        name, namespace = job.metadata.name, job.metadata.namespace
        _json({"ok": True, "exitCode": 0, "name": name, "namespace": namespace, "warnings": warnings})
        return 0
    print(f"{args.file}: valid TAOJob {job.metadata.namespace}/{job.metadata.name}")
    for warning in warnings:
        print(f"warning: {warning}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from tao_operator import local

    job = _load(args)
    for warning in job.spec.evaluation.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    if args.rounds is not None:
        if job.spec.continuous is not None:
            return _fail(
                args,
                Exit.USAGE,
                "--rounds is for a fixed number of rounds; this TAOJob is continuous: use --cycles",
            )
        job.spec.rounds = args.rounds
    if args.cycles is not None:
        if job.spec.continuous is None:
            return _fail(
                args,
                Exit.USAGE,
                "--cycles needs spec.continuous (interval, minNewPrompts); use --rounds otherwise",
            )
        job.spec.continuous.max_rounds = args.cycles
    elif job.spec.continuous is not None and job.spec.continuous.max_rounds is None:
        print(
            "continuous: runs until interrupted (Ctrl-C; the same command continues); --cycles N stops after N rounds",
            file=sys.stderr,
        )
    json_out = args.output == "json"

    def echo(line: str) -> None:
        print(line, file=sys.stderr if json_out else sys.stdout, flush=True)

    try:
        report = local.run_local(
            job, fresh=args.fresh, echo=echo, verbose=args.verbose, warm=not args.no_warm_worker
        )
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command to continue from the last complete stage", file=sys.stderr)
        return int(Exit.INTERRUPTED)
    except local.RunError as e:
        return _fail(args, e.code, str(e))
    report_uri = RunLayout(report["runUri"]).report
    if json_out:
        _json({"ok": True, "exitCode": 0, "reportUri": report_uri, "report": report})
        return 0
    print()
    print(format_table(report))
    print()
    print(describe_champion(report))
    print(f"report: {report_uri}")
    return 0


def _cmd_preflight(args: argparse.Namespace) -> int:
    from tao_operator import local

    job = _load(args)
    if args.prompts is not None:
        job.spec.preflight.prompts = args.prompts
    try:
        with local.storage_errors():
            result, report = local.preflight_local(job, verbose=args.verbose)
    except local.RunError as e:
        return _fail(args, e.code, str(e))
    except KeyboardInterrupt:
        return int(Exit.INTERRUPTED)
    if report is None:
        code = local.failure(result, None).code
        return _fail(args, code, f"preflight failed: {result.message}")
    code = Exit.OK if report["signal"] else Exit.NO_SIGNAL
    if args.output == "json":
        _json({"ok": code == Exit.OK, "exitCode": int(code), "signal": report["signal"], "report": report})
    else:
        print(format_preflight(report))
    return int(code)


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
                namespaces=namespaces,
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
        enable_lora=args.enable_lora,
        lora_modules=args.lora_modules,
        max_lora_rank=args.max_lora_rank,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tao",
        description="Tune an LLM on its own unlabeled prompts (TAO).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def outputs(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-o",
            "--output",
            choices=["text", "json"],
            default="text",
            help="json: one JSON object on stdout (progress lines go to stderr)",
        )

    run = sub.add_parser(
        "run",
        help="run a TAOJob on this machine, stage by stage (resumable)",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("file", help="TAOJob manifest (YAML; - reads standard input)")
    outputs(run)
    run.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show the stages' own output (library warnings, progress bars); default: tao-run.log in the run directory",
    )
    run.add_argument(
        "--fresh", action="store_true", help="delete this job's earlier run artifacts and start over"
    )
    run.add_argument(
        "--no-warm-worker",
        action="store_true",
        help="start every stage as a new Python process (default: stages that load a model are forked from one "
        "process that imported torch, transformers and TRL once; also TAO_WARM_WORKER=0)",
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
        help="generate and score a sample of prompts: can the scorers tell candidates apart? (exit 3: no signal)",
    )
    preflight.add_argument("file", help="TAOJob manifest (YAML; - reads standard input)")
    preflight.add_argument("--prompts", type=int, help="override spec.preflight.prompts (the sample size)")
    preflight.add_argument("--verbose", "-v", action="store_true", help="show the stage's own output")
    outputs(preflight)
    preflight.set_defaults(func=_cmd_preflight)

    validate = sub.add_parser("validate", help="check a TAOJob manifest and name every invalid field")
    validate.add_argument("file", help="TAOJob manifest (YAML; - reads standard input)")
    outputs(validate)
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
    serve.add_argument("--enable-lora", action="store_true", help="serve LoRA adapters (as vLLM's flag)")
    serve.add_argument(
        "--lora-modules",
        nargs="+",
        action="extend",
        metavar="NAME=PATH",
        help="LoRA adapters, each served under its NAME (repeatable; JSON {name, path} too, as vLLM)",
    )
    serve.add_argument("--max-lora-rank", type=int, default=16, help="refuse adapters of a higher rank")
    serve.add_argument("--max-batch", type=int, default=32, help="choices decoded together at most")
    serve.add_argument("--max-queue", type=int, default=256, help="requests waiting at most; more get a 429")
    serve.set_defaults(func=_cmd_serve)

    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except SpecError as e:
        return _fail(
            args,
            Exit.USAGE,
            f"{e}\nFix the fields named above (`tao validate FILE` checks a manifest).",
            problems=e.problems,
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
