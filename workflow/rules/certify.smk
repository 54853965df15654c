# Certification is split into interleaved shards by image index; the shard count is
# part of the path so that changing it never mixes shards of two layouts.
SHARD = path("certify", "{runname}", "sigma{sigma}", "shards", f"{{k}}-of-{SHARDS}.tsv")

# concatenating shards takes seconds: on the submit host under any executor
localrules:
    merge_shards,


rule certify_shard:
    input:
        data=lambda w: STUDY.data(w.runname),
        base=lambda w: STUDY.base(w.runname),
        model=STUDY.model(),
    output:
        SHARD,
    params:
        sampling=(
            f"--n0 {CERT['n0']} --n {CERT['n']} --alpha {CERT['alpha']} --batch {CERT['batch']} "
            f"--seed {CERT['seed']} {SELECTION} --precision {CERT['precision']}"
            + (" --merge-lora" if CERT["merge_lora"] else "")
        ),
        adaptive=(
            f"--adaptive --pool {CERT['pool']} --radii {','.join(map(str, config['summary']['radii']))}"
            + (f" --rtol {CERT['rtol']}" if CERT["rtol"] else "")
            if CERT["adaptive"] else ""
        ),
        shard=lambda w: f"{w.k}/{SHARDS}",
        device=DEVICE,
    threads: config["threads"]
    resources:
        gpu=config["gpus_per_job"],
    conda:
        ENV
    log:
        path("logs", "certify", f"{{runname}}_sigma{{sigma}}_{{k}}-of-{SHARDS}.log"),
    shell:
        "pefts certify --model {input.model} --base {input.base} --data {input.data} "
        "--sigma {wildcards.sigma} {params.sampling} {params.adaptive} --shard {params.shard} "
        "--out {output} --device {params.device} --force 2> {log}"


rule merge_shards:
    input:
        data=lambda w: STUDY.data(w.runname),
        shards=expand(SHARD, k=range(SHARDS), allow_missing=True),
    output:
        STUDY.certified(),
    params:
        selection=SELECTION,
    conda:
        ENV
    log:
        path("logs", "merge", "{runname}_sigma{sigma}.log"),
    shell:
        "pefts merge {input.shards} --out {output} --data {input.data} "
        "{params.selection} --force 2> {log}"
