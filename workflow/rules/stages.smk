# Stage "stages": one rule per node of this stage in echo/pipeline/dag.py.
for _n in [n for n in dag.nodes() if n.stage == "stages"]:

    rule:
        name:
            _n.name
        input:
            node_inputs(_n),
        output:
            node_outputs(_n),
        params:
            slice=params_slice(config, _n.params),
            # bound here: a `shell:` body is evaluated when the job runs, after the loop moved on
            cmd=_n.cmd,
        log:
            _n.log,
        benchmark:
            _n.benchmark
        threads: _n.threads
        resources:
            gpu=_n.gpu,
        shell:
            "{params.cmd} > {log} 2>&1"
