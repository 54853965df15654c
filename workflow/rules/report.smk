# Tables (TSV + Markdown) and figures (PNG) of every experiment; the tables and figures
# also go into `snakemake --report report.html`.
MAIN = STUDY.main_grid()
TWOBIRDS = STUDY.twobirds_grid()
NOISE = STUDY.noise_grid()
CURVE_RUNS = [*dict.fromkeys(r for r, _ in MAIN), "base"]
SOUND = STUDY.sound_grid()
# the runs some row of the paper is set beside (`none` is in none: the paper's RS rows are
# other papers' noise-trained models)
PAPER_RUNS = [(m, s) for m, s in MAIN if m in compared_methods(config["summary"]["paper"])] \
    if config["summary"]["paper"] else []

# Tables and figures take seconds: on a cluster they run on the submit host, never
# through sbatch with a GPU job's memory and runtime (docs/cluster.md).
localrules:
    summarize,
    plot_certified,
    parameters,
    paper_comparison,
    twobirds_report,
    ablation_report,
    noise_learning_report,
    sound_comparison,
    training_curves,


rule summarize:
    input:
        certified(MAIN),
    output:
        tsv=table("certified.tsv", "main comparison"),
        md=table("certified.md", "main comparison"),
    params:
        runs=run_args(MAIN),
        radii=RADII,
    conda:
        ENV
    log:
        path("logs", "summarize.log"),
    shell:
        "pefts summarize {params.runs} --radii {params.radii} "
        "--out-tsv {output.tsv} --out-md {output.md} > {log} 2>&1"


# certify.sound_compare: one run in both modes, certified counts and cost side by side
rule sound_comparison:
    input:
        standard=certified(SOUND),
        sound=[STUDY.sound_certified(r, s) for r, s in SOUND],
    output:
        tsv=table("sound_comparison.tsv", "main comparison"),
        md=table("sound_comparison.md", "main comparison"),
    params:
        radii=RADII,
    conda:
        ENV
    log:
        path("logs", "sound_comparison.log"),
    shell:
        "pefts compare-sound --standard {input.standard} --sound {input.sound} --radii {params.radii}"
        " --out-tsv {output.tsv} --out-md {output.md} > {log} 2>&1"


rule plot_certified:
    input:
        certified(MAIN),
    output:
        [figure(f"certified_sigma{s}.png", "main comparison") for s in STUDY.sigmas],
    params:
        runs=run_args(MAIN),
        pattern=lambda w: path("figures", "certified_sigma{sigma}.png"),
    conda:
        ENV
    log:
        path("logs", "plot_certified.log"),
    shell:
        "pefts plot {params.runs} --out {params.pattern:q} > {log} 2>&1"


rule parameters:
    input:
        models=models(MAIN),
        summary=path("summary", "certified.tsv"),
    output:
        tsv=table("parameters.tsv", "main comparison"),
        md=table("parameters.md", "main comparison"),
        figure=figure("accuracy_vs_parameters.png", "main comparison"),
    params:
        runs=lambda w, input: STUDY.run_args(MAIN, list(input.models)),
    conda:
        ENV
    log:
        path("logs", "parameters.log"),
    shell:
        "pefts parameters {params.runs} --summary {input.summary} --out-tsv {output.tsv} "
        "--out-md {output.md} --figure {output.figure} > {log} 2>&1"


# every trained run's curve (pefts.training.curves: model.curve.tsv beside its weights, written
# by the training job but not declared, so a killed job keeps its rows for the resume)
rule training_curves:
    input:
        models=models(MAIN),
        bases=sorted({STUDY.base(r) for r, _ in MAIN}),
    output:
        [figure(f"training_curves_{m}.png", "training curves") for m in CURVE_RUNS],
    params:
        runs=lambda w, input: STUDY.run_args(MAIN, list(input.models)),
        bases=lambda w, input: " ".join(f"--base {b}" for b in input.bases),
        pattern=lambda w: path("figures", "training_curves_{run}.png"),
    conda:
        ENV
    log:
        path("logs", "training_curves.log"),
    shell:
        "pefts plot-curves {params.runs} {params.bases} --out {params.pattern:q} > {log} 2>&1"


rule paper_comparison:
    input:
        runs=certified(PAPER_RUNS),
        parameters=path("summary", "parameters.tsv"),
    output:
        tsv=table("paper_comparison.tsv", "main comparison"),
        md=table("paper_comparison.md", "main comparison"),
    params:
        runs=lambda w, input: STUDY.run_args(PAPER_RUNS, list(input.runs)),
        dataset=config["summary"]["paper"],
    conda:
        ENV
    log:
        path("logs", "paper_comparison.log"),
    shell:
        "pefts compare-paper --dataset {params.dataset} {params.runs} "
        "--parameters {input.parameters} --out-tsv {output.tsv} --out-md {output.md} > {log} 2>&1"


rule twobirds_report:
    input:
        certified(TWOBIRDS),
    output:
        tsv=table("twobirds.tsv", "two birds, one stone"),
        md=table("twobirds.md", "two birds, one stone"),
        figure=figure("twobirds.png", "two birds, one stone"),
    params:
        runs=run_args(TWOBIRDS),
        radii=RADII,
    conda:
        ENV
    log:
        path("logs", "twobirds.log"),
    shell:
        "(pefts summarize {params.runs} --radii {params.radii} --out-tsv {output.tsv} --out-md {output.md}"
        " && pefts plot-vs-sigma --summary {output.tsv} --columns r=0,ACR --out {output.figure}"
        " --title 'one round against two rounds') > {log} 2>&1"


rule ablation_report:
    input:
        lambda w: certified(STUDY.ablation_grid(w.kind)),
    output:
        tsv=table("ablation_{kind}.tsv", "ablations"),
        md=table("ablation_{kind}.md", "ablations"),
        figure=figure("ablation_{kind}.png", "ablations"),
    params:
        runs=lambda w, input: STUDY.run_args(STUDY.ablation_grid(w.kind), list(input)),
        radii=RADII,
    wildcard_constraints:
        kind="prompt_length|lora_rank",
    conda:
        ENV
    log:
        path("logs", "ablation_{kind}.log"),
    shell:
        "(pefts summarize {params.runs} --radii {params.radii} --out-tsv {output.tsv} --out-md {output.md}"
        " && pefts plot {params.runs} --out {output.figure}) > {log} 2>&1"


rule noise_learning_report:
    input:
        models(NOISE),
    output:
        tsv=table("noise_learning.tsv", "noise learning"),
        md=table("noise_learning.md", "noise learning"),
        figure=figure("noise_learning.png", "noise learning"),
    params:
        runs=run_args(NOISE),
    conda:
        ENV
    log:
        path("logs", "noise_learning.log"),
    shell:
        "pefts noise-accuracy {params.runs} --out-tsv {output.tsv} --out-md {output.md} "
        "--figure {output.figure} > {log} 2>&1"


# Named targets: `snakemake --cores all twobirds` and so on.
rule main:
    input:
        main_outputs(),


rule twobirds:
    input:
        twobirds_outputs(),


rule ablations:
    input:
        ablation_outputs(),


rule noise_learning:
    input:
        noise_outputs(),


rule experiments:
    input:
        main_outputs(),
        twobirds_outputs(),
        ablation_outputs(),
        noise_outputs(),
