# Certification is split into interleaved shards by image index; the shard count is
# part of the path so that changing it never mixes shards of two layouts (and a changed
# count under shards on disk is refused: common.smk). Each (run, sigma) has its own
# selection and shard count (two birds certifies a few classes; certify.shards: auto
# sizes each by its planned work), capped at its number of images so that no shard is
# empty (pefts.study.experiments.Study.shards).
SHARD = path("certify", "{runname}", "sigma{sigma}", "shards", "{k}-of-{shards}.tsv")

# the run that certify.sound_compare certifies again in sound mode, in a folder of its own
SOUND_SHARD = path("certify", "{runname}", "sigma{sigma}", "sound", "shards", "{k}-of-{shards}.tsv")
SAMPLING = (
    f"--n0 {CERT['n0']} --n {CERT['n']} --alpha {CERT['alpha']} --batch {CERT['batch']} "
    f"--seed {CERT['seed']} --precision {CERT['precision']}"
    + (" --merge-lora" if CERT["merge_lora"] else "")
)
ADAPTIVE = (
    f"--adaptive --pool {CERT['pool']} --grid {','.join(map(str, CERT['grid']))}"
    + (f" --rtol {CERT['rtol']}" if CERT["rtol"] else "")
    if CERT["adaptive"] else ""
)

# concatenating shards takes seconds: on the submit host under any executor
localrules:
    merge_shards,
    merge_sound_shards,


rule certify_shard:
    input:
        data=lambda w: STUDY.data(w.runname),
        base=lambda w: STUDY.base(w.runname),
        model=STUDY.model(),
    output:
        SHARD,
    params:
        sampling=SAMPLING + (" --sound" if CERT["sound"] else ""),
        selection=lambda w: STUDY.selection(w.runname),
        adaptive=ADAPTIVE,
        shard=lambda w: f"{w.k}/{w.shards}",
        compile=lambda w: compile_options(w.runname),
        device=DEVICE,
    threads: config["threads"]
    resources:
        gpu=config["gpus_per_job"],
    conda:
        ENV
    log:
        path("logs", "certify", "{runname}_sigma{sigma}_{k}-of-{shards}.log"),
    shell:
        "pefts certify --model {input.model} --base {input.base} --data {input.data} "
        "--sigma {wildcards.sigma} {params.sampling} {params.selection} {params.adaptive} "
        "{params.compile} --shard {params.shard} "
        "--out {output} --device {params.device} --gpus {resources.gpu} --force 2> {log}"


# certify.shards: auto packs the sigmas of a run that each fit one shard into jobs of at
# most shard_minutes planned (pefts.study.experiments.Study.packs): one process certifies them
# one after another, so the run pays one start-up instead of one per sigma. A packed
# sigma's output is the very file its one shard would be (shards/0-of-1.tsv, written
# with the same settings and rows, resumed from the same partial), so packing is no
# layout and merge_shards reads it as before. One rule per pack: a rule's outputs are
# fixed in number, a pack's are its sigmas. Each is ordered before certify_shard, which
# could write the same files one sigma at a time.
# each pack's rule takes the resources the profile or --set-resources give certify_shard
# (partition, runtime, ...) unless set for it by name: a user names certify_shard once,
# not every generated rule. Snakemake keeps those settings by rule name only, parsed
# before the first rule is defined, so they are copied there.
_OVERWRITE = workflow.resource_settings._parsed_overwrite_resources
for _run, _sigmas in STUDY.packs() if "certify_shard" in _OVERWRITE else []:
    _OVERWRITE.setdefault(packed_rule(_run, _sigmas), _OVERWRITE["certify_shard"])

for _run, _sigmas in STUDY.packs():

    rule:
        name:
            packed_rule(_run, _sigmas)
        input:
            data=STUDY.data(_run),
            base=STUDY.base(_run),
            models=[STUDY.model(_run, s) for s in _sigmas],
        output:
            [SHARD.format(runname=_run, sigma=s, k=0, shards=1) for s in _sigmas],
        params:
            sampling=SAMPLING + (" --sound" if CERT["sound"] else ""),
            selection=STUDY.selection(_run),
            adaptive=ADAPTIVE,
            compile=compile_options(_run),
            jobs=lambda w, input, output, sigmas=_sigmas: " ".join(
                f"--job {s} {m} {o}" for s, m, o in zip(sigmas, input.models, output, strict=True)
            ),
            device=DEVICE,
        threads: config["threads"]
        resources:
            gpu=config["gpus_per_job"],
        conda:
            ENV
        log:
            path("logs", "certify", f"{_run}_sigma{'+'.join(_sigmas)}.log"),
        shell:
            "pefts certify-packed {params.jobs} --base {input.base} --data {input.data} "
            "{params.sampling} {params.selection} {params.adaptive} {params.compile} "
            "--device {params.device} --gpus {resources.gpu} --force 2> {log}"

    workflow.ruleorder(packed_rule(_run, _sigmas), "certify_shard")


rule merge_shards:
    input:
        data=lambda w: STUDY.data(w.runname),
        shards=lambda w: shard_files(SHARD, w),
    output:
        STUDY.certified(),
    params:
        selection=lambda w: STUDY.selection(w.runname),
    conda:
        ENV
    log:
        path("logs", "merge", "{runname}_sigma{sigma}.log"),
    shell:
        "pefts merge {input.shards} --out {output} --data {input.data} "
        "{params.selection} --force 2> {log}"


# the same run, images and settings in sound mode (Voracek & Hein), for summary/sound_comparison
use rule certify_shard as certify_sound_shard with:
    output:
        SOUND_SHARD,
    params:
        sampling=f"{SAMPLING} --sound",
        selection=lambda w: STUDY.selection(w.runname),
        adaptive=ADAPTIVE,
        shard=lambda w: f"{w.k}/{w.shards}",
        compile=lambda w: compile_options(w.runname),
        device=DEVICE,
    log:
        path("logs", "certify_sound", "{runname}_sigma{sigma}_{k}-of-{shards}.log"),


use rule merge_shards as merge_sound_shards with:
    input:
        data=lambda w: STUDY.data(w.runname),
        shards=lambda w: shard_files(SOUND_SHARD, w),
    output:
        STUDY.sound_certified(),
    log:
        path("logs", "merge_sound", "{runname}_sigma{sigma}.log"),
