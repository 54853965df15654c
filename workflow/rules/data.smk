rule prepare:
    output:
        STUDY.setups()["main"]["data"],
    params:
        options=DATA_OPTIONS,
        classes="",
    conda:
        ENV
    log:
        path("logs", "prepare.log"),
    shell:
        "pefts prepare {params.options} --out $(dirname {output}) {params.classes} 2> {log}"


# Two birds, one stone: a source task and a downstream task with disjoint classes, from
# the same data (root, download, image options) as the main comparison.
use rule prepare as prepare_task with:
    output:
        path("twobirds", "data_{task}", "manifest.json"),
    params:
        options=DATA_OPTIONS,
        classes=lambda w: "--classes " + ",".join(map(str, EXP["twobirds"][f"{w.task}_classes"])),
    log:
        path("logs", "prepare_{task}.log"),
