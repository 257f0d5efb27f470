"""Workflow entry points.

    python -m echo.pipeline run NODE        # run one node (what Snakemake and DVC call)
    python -m echo.pipeline dvc [--check]   # write dvc.yaml from the node registry (or check it)
    python -m echo.pipeline snakemake [--check] # write workflow/rules/nodes.smk from the registry (or check it)
    python -m echo.pipeline schema [--check] # write the params JSON schema from the config dataclasses
    python -m echo.pipeline validate        # validate params.yaml (one line on error)
    python -m echo.pipeline parent NAME     # create the MLflow DB + parent run (Snakemake onstart)
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from echo.errors import EchoError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m echo.pipeline")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("node")
    r.add_argument("--params", default="params.yaml")
    r.add_argument("--no-mlflow", action="store_true")
    d = sub.add_parser("dvc")
    d.add_argument("--check", action="store_true")
    d.add_argument("--params", default="params.yaml")
    sm = sub.add_parser("snakemake")
    sm.add_argument("--check", action="store_true")
    v = sub.add_parser("validate")
    v.add_argument("--params", default="params.yaml")
    w = sub.add_parser("worker", help="one torchrun rank of a multi-process node")
    w.add_argument("node")
    w.add_argument("--params", default="params.yaml")
    w.add_argument("--run-id", default=None)
    sc = sub.add_parser("schema")
    sc.add_argument("--check", action="store_true")
    p = sub.add_parser("parent")
    p.add_argument("name", nargs="?", default="workflow")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        if args.cmd == "run":
            from echo.pipeline.runner import run_node

            run_node(args.node, Path(args.params), mlflow=not args.no_mlflow)
        elif args.cmd == "worker":
            from echo.pipeline.runner import run_worker

            run_worker(args.node, Path(args.params), args.run_id)
        elif args.cmd == "dvc":
            from echo.pipeline.dvc import check_dvc_yaml, write_dvc_yaml

            if args.check:
                check_dvc_yaml(Path("dvc.yaml"), Path(args.params))
                print("dvc.yaml is up to date")
            else:
                write_dvc_yaml(Path("dvc.yaml"), Path(args.params))
        elif args.cmd == "snakemake":
            from echo.pipeline.rules import PATH, check_rules, write_rules

            if args.check:
                check_rules()
                print(f"{PATH} is up to date")
            else:
                write_rules()
        elif args.cmd == "schema":
            from echo.pipeline.schema import check_schema, write_schema

            check_schema() if args.check else write_schema()
        elif args.cmd == "validate":
            from echo.config import load_raw, validate_raw

            validate_raw(load_raw(args.params), args.params)
            print(f"{args.params}: ok")
        elif args.cmd == "parent":
            from echo.tracking import start_parent

            print(start_parent(args.name))
    except EchoError as e:
        print(f"echo: error: {e}", file=sys.stderr)
        return 2 if e.__class__.__name__ == "ConfigError" else 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "1")
    sys.exit(main())
