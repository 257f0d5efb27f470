# Echo's workflow. Build everything:   snakemake --cores all results/tables.md
#
# The rules are in workflow/rules/nodes.smk, one written-out rule per job (named inputs `data` and
# `code`, outputs, `metrics`, params slice, log, benchmark, threads, gpu resource). That file is
# GENERATED from the node registry echo/pipeline/dag.py (`python -m echo.pipeline snakemake`), as
# dvc.yaml is (`python -m echo.pipeline dvc`), and tests fail when either is stale. Why generated
# rather than hand-written wildcard rules: DVC needs every job spelled out, and the node runner
# (`python -m echo.pipeline run NODE`) reads a node's paths from dag.py; hand-written rules would be
# a second copy of every path and params slice to keep in step. Generated, each rule still reads as
# plain Snakemake with its concrete files, in the DAG's order (`snakemake --list-rules`).

# Parsed by echo.config first: a YAML syntax error is one line naming the file and line (Snakemake's own
# message has neither); the values are validated in workflow/rules/common.smk.
import sys

from echo.config import ConfigError, load_raw

try:
    load_raw("params.yaml")
except ConfigError as e:
    sys.stderr.write(f"echo: error: {e}\n")
    sys.exit(2)


configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/nodes.smk"


rule all:
    default_target: True
    input:
        "results/tables.md",
