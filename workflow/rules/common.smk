# Shared set-up: validate params.yaml before any job runs (one line on error), create the MLflow
# store + parent run once before parallel jobs start, and a helper that turns a node into a rule.
import sys

from echo.config import ConfigError, params_slice, validate_raw
from echo.pipeline import dag

try:
    validate_raw(config, "params.yaml")
except ConfigError as e:
    sys.stderr.write(f"echo: error: {e}\n")
    sys.exit(2)


def node_outputs(n):
    return [directory(o) if o in n.dirs else o for o in n.all_outs]


def node_inputs(n):
    return list(n.deps) + list(n.code)


onstart:
    # Created here, once: parallel jobs must not race on MLflow's schema migrations.
    shell("python -m echo.pipeline parent snakemake > /dev/null")


onsuccess:
    from echo.tracking import finish_parent

    finish_parent("FINISHED")


onerror:
    from echo.tracking import finish_parent

    finish_parent("FAILED")
