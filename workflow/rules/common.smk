# Shared set-up: validate params.yaml before any job runs (one line on error) and create the MLflow
# store + parent run once before parallel jobs start. `params_slice` is used by the rules in nodes.smk.
import sys

from echo.config import ConfigError, params_slice, validate_raw

try:
    validate_raw(config, "params.yaml")
except ConfigError as e:
    sys.stderr.write(f"echo: error: {e}\n")
    sys.exit(2)


onstart:
    # Created here, once: parallel jobs must not race on MLflow's schema migrations.
    shell("python -m echo.pipeline parent snakemake > /dev/null")


onsuccess:
    from echo.tracking import finish_parent

    finish_parent("FINISHED")


onerror:
    from echo.tracking import finish_parent

    finish_parent("FAILED")
