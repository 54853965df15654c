# Pages of docs/ regenerated from finished runs, never pasted (run from the repository root):
#   snakemake --cores all docs               the README's figure and docs/default-run.md
#   snakemake --cores all docs_experiments   docs/experiments.md (after `experiments`)
#   snakemake --cores all docs_benchmarks    docs/measurements/*.md (8 min on 2 cores)
# Each page names the command that wrote it; its prose lives in docs/<page>.head.md.

# pages are assembled in seconds; the benchmarks measure, so they run where the jobs run
localrules:
    docs,
    docs_experiments,
    docs_benchmarks,


rule docs:
    input:
        head="docs/default-run.head.md",
        certified=path("summary", "certified.md"),
        parameters=path("summary", "parameters.md"),
        figure=path("figures", f"certified_sigma{STUDY.sigmas[-1]}.png"),
        sound=[path("summary", "sound_comparison.md")] if SOUND else [],
    output:
        page="docs/default-run.md",
        figure="docs/figures/certified.png",
    params:
        sound=lambda w, input: f"--section 'Sound mode beside the standard mode' {input.sound}"
        if SOUND else "",
    conda:
        ENV
    log:
        path("logs", "docs.log"),
    shell:
        "(pefts docs-page --head {input.head} --by 'snakemake --cores all docs'"
        " --section 'Certified accuracy' {input.certified}"
        " --section 'Trainable parameters' {input.parameters} {params.sound} --out {output.page}"
        " && cp {input.figure} {output.figure}) > {log} 2>&1"


rule docs_experiments:
    input:
        head="docs/experiments.head.md",
        twobirds=path("summary", "twobirds.md"),
        prompt=path("summary", "ablation_prompt_length.md"),
        rank=path("summary", "ablation_lora_rank.md"),
        noise=path("summary", "noise_learning.md"),
    output:
        "docs/experiments.md",
    conda:
        ENV
    log:
        path("logs", "docs_experiments.log"),
    shell:
        "pefts docs-page --head {input.head} --by 'snakemake --cores all docs_experiments'"
        " --section 'Two birds, one stone' {input.twobirds}"
        " --section 'Ablation: prompt length' {input.prompt}"
        " --section 'Ablation: LoRA rank' {input.rank}"
        " --section 'Noise learning' {input.noise} --out {output} > {log} 2>&1"


# the certifier's throughput beside the raw forward pass, on the built-in tiny ViT
rule docs_benchmark_throughput:
    output:
        "docs/measurements/throughput-cpu.md",
    conda:
        ENV
    params:
        n=config["docs"]["throughput_n"],
    log:
        path("logs", "docs_benchmark_throughput.log"),
    shell:
        "pefts benchmark --threads 1 --n {params.n} --device cpu --out-md {output} > {log} 2>&1"


# fixed n = 100,000 against adaptive with n_max = 100,000 on the default's LoRA models
rule docs_benchmark_adaptive:
    input:
        # functions: a config without LoRA still parses (this target then has no input)
        model=lambda w: STUDY.model("lora", w.sigma),
        base=lambda w: STUDY.base("lora"),
        data=lambda w: STUDY.data("lora"),
    output:
        "docs/measurements/adaptive-lora-sigma{sigma}.md",
    threads: 1
    conda:
        ENV
    log:
        path("logs", "docs_benchmark_adaptive_{sigma}.log"),
    shell:
        "pefts benchmark-adaptive --model {input.model} --base {input.base} --data {input.data}"
        " --sigma {wildcards.sigma} --n 100000 --n0 64 --skip 18 --max 25 --seeds 0"
        " --device cpu --out-md {output} > {log} 2>&1"


rule docs_benchmark_replay:
    input:
        COHEN_LOGS,
    output:
        "docs/measurements/replay-cohen-grid-{grid}-abstain{p}.md",
    wildcard_constraints:
        grid="sigma|presets",
    params:
        grids=replay_grids,
    conda:
        ENV
    log:
        path("logs", "docs_benchmark_replay_{grid}_{p}.log"),
    shell:
        "pefts benchmark-replay {input} {params.grids} --abstain-p {wildcards.p} --reps 20"
        " --out-md {output} > {log} 2>&1"


# bf16 against fp32 for the diffusion row, random-weight models (no input files)
rule docs_benchmark_precision:
    output:
        "docs/measurements/diffusion-precision.md",
    threads: 1
    conda:
        ENV
    log:
        path("logs", "docs_benchmark_precision.log"),
    shell:
        "pefts benchmark-precision --out-md {output} > {log} 2>&1"


# a job's start-up by phase, per method of the CIFAR-10 preset at its real size (random
# ViT-B/16 weights, nothing fetched), each in a fresh process, cold and warm; the TSV is
# what `pefts plan` can read (pefts.benchmarks.startup.read_startup). fp32: this CPU has
# no bf16 units (bf16 is emulated there, minutes a batch); batch 2: the first batch on a
# CPU says nothing of a GPU's
rule docs_benchmark_startup:
    input:
        in_repo("configs/cifar10-vitb16.yaml"),
    output:
        page="docs/measurements/startup-cpu.md",
        tsv="docs/measurements/startup-cpu.tsv",
    threads: 1
    conda:
        ENV
    log:
        path("logs", "docs_benchmark_startup.log"),
    shell:
        "pefts benchmark-startup --configfile {input} --compile lora --precision fp32 --batch 2"
        " --threads 1 --device cpu --out {output.tsv} --out-md {output.page} > {log} 2>&1"


rule docs_benchmarks:
    input:
        "docs/measurements/throughput-cpu.md",
        "docs/measurements/diffusion-precision.md",
        "docs/measurements/startup-cpu.md",
        expand("docs/measurements/replay-cohen-grid-{grid}-abstain{p}.md",
               grid=["sigma", "presets"], p=["0.5", "0.3"]),
        [f"docs/measurements/adaptive-lora-sigma{s}.md" for s in STUDY.sigmas],
