rule summarize:
    input:
        [certified_path(m, s) for m, s in GRID],
    output:
        tsv=path("summary", "certified.tsv"),
        md=path("summary", "certified.md"),
    params:
        runs=lambda w, input: runs(input),
        radii=",".join(map(str, config["summary"]["radii"])),
    log:
        path("logs", "summarize.log"),
    shell:
        "pefts summarize {params.runs} --radii {params.radii} "
        "--out-tsv {output.tsv} --out-md {output.md} > {log} 2>&1"


rule plot_certified:
    input:
        [certified_path(m, s) for m, s in GRID],
    output:
        [path("figures", f"certified_sigma{s}.png") for s in SIGMAS],
    params:
        runs=lambda w, input: runs(input),
        pattern=lambda w: path("figures", "certified_sigma{sigma}.png"),
    log:
        path("logs", "plot_certified.log"),
    shell:
        "pefts plot {params.runs} --out {params.pattern:q} > {log} 2>&1"


rule parameters:
    input:
        models=[model_path(m, s) for m, s in GRID],
        summary=path("summary", "certified.tsv"),
    output:
        tsv=path("summary", "parameters.tsv"),
        md=path("summary", "parameters.md"),
        figure=path("figures", "accuracy_vs_parameters.png"),
    params:
        runs=lambda w, input: runs(input.models),
    log:
        path("logs", "parameters.log"),
    shell:
        "pefts parameters {params.runs} --summary {input.summary} --out-tsv {output.tsv} "
        "--out-md {output.md} --figure {output.figure} > {log} 2>&1"
