"""Deploy tools, run by `pants deploy` (and usable by hand with the tools' PEX):

    python -m ml_deploy deploy   --config platform/deploy.yaml --env dev --spec release.json --package DIR [--gateway-pex gateway.pex] [--dry-run]
    python -m ml_deploy rollback --config platform/deploy.yaml --env dev --model iris --model-version 1 --compute lambda [--dry-run]
    python -m ml_deploy retire   --config platform/deploy.yaml --env prod --model iris --model-version 1 --compute fargate [--dry-run] [--force]
    python -m ml_deploy status   --config platform/deploy.yaml --env local
    python -m ml_deploy stop     --config platform/deploy.yaml --env local [--model iris]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Optional, Sequence

from ml_deploy import config, drivers
from ml_deploy.plan import DeployFailed, execute
from ml_deploy.release import Release


def _say(text: str) -> None:
    print(text, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml_deploy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "deploy": "deploy one packaged model version",
        "rollback": "serve the version that was live before the last deploy",
        "retire": "remove a model version from AWS once nothing routes to it",
        "status": "what runs locally (local environments)",
        "stop": "stop local deployments and the gateway (local environments)",
    }
    parsers = {name: sub.add_parser(name, help=text) for name, text in commands.items()}
    for p in parsers.values():
        p.add_argument("--config", type=Path, default=Path("platform/deploy.yaml"),
                       help="the deploy environments file")
        p.add_argument("--env", default="local", help="the environment (a section of --config)")
    parsers["deploy"].add_argument("--spec", type=Path, required=True, help="the model's settings (JSON)")
    parsers["deploy"].add_argument("--package", type=Path, required=True,
                                   help="the model's package directory (with image/)")
    parsers["deploy"].add_argument("--gateway-pex", type=Path,
                                   help="local environments: the gateway to start if none runs "
                                        "(`pants deploy` passes //platform:gateway)")
    for name in ("deploy", "rollback", "retire"):
        parsers[name].add_argument("--dry-run", action="store_true",
                                   help="print the plan; make no changes")
    parsers["deploy"].add_argument("--rollout-timeout", type=int,
                                   help="seconds to wait for the rollout (default: the environment's "
                                        "rollout_timeout)")
    for name in ("rollback", "retire"):
        parsers[name].add_argument("--model", required=True, help="the model's name")
        parsers[name].add_argument("--model-version", type=int, required=True, help="its version")
        parsers[name].add_argument("--compute", choices=config.COMPUTE_TYPES, required=True,
                                   help="the compute it was deployed to")
    parsers["retire"].add_argument("--force", action="store_true",
                                   help="retire it even though it served requests in the last hour")
    parsers["stop"].add_argument("--model", help="only this model (all versions)")
    args = parser.parse_args(argv)

    try:
        environment = config.load(args.config, args.env)
        if getattr(args, "rollout_timeout", None) is not None:
            environment = dataclasses.replace(environment, rollout_timeout=args.rollout_timeout)
        if args.command == "deploy":
            release = Release.from_files(args.spec, args.package)
            execute(drivers.plan_deploy(release, environment, args.gateway_pex), dry_run=args.dry_run, say=_say)
        elif args.command == "retire":
            from ml_deploy.retire import plan_retire

            plan = plan_retire(args.model, args.model_version, args.compute, environment, force=args.force)
            execute(plan, dry_run=args.dry_run, say=_say)
        elif args.command == "rollback":
            compute = environment.compute or args.compute
            module = drivers.driver(compute)
            if not hasattr(module, "plan_rollback"):
                raise config.ConfigError(f"rollback is not supported for {compute}")
            plan = module.plan_rollback(args.model, args.model_version, environment)
            execute(plan, dry_run=args.dry_run, say=_say)
        else:
            from ml_deploy import local

            if args.command == "status":
                _say(local.status(environment))
            else:
                local.stop(environment, model=args.model, say=_say)
    except DeployFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except config.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - planning reads AWS, engines, registries: report, not trace
        print(f"error: {args.command} in environment {args.env!r} failed: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
