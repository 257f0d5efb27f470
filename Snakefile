# Echo's workflow. Build everything:   snakemake --cores all results/tables.md
# The nodes (commands, inputs, outputs, params slices) are defined once in echo/pipeline/dag.py;
# each workflow/rules/<stage>.smk turns that stage's nodes into rules. dvc.yaml is generated from
# the same registry (python -m echo.pipeline dvc).

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
include: "workflow/rules/corpus.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/simulation.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/stages.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        "results/tables.md",
