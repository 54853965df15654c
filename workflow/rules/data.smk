rule prepare:
    output:
        STUDY.setups()["main"]["data"],
    params:
        root=f"--root {config['dataset']['root']}" if config["dataset"]["root"] else "",
        download="--download" if config["dataset"]["download"] else "",
        dataset=config["dataset"]["name"],
        seed=config["dataset"]["seed"],
    conda:
        ENV
    log:
        path("logs", "prepare.log"),
    shell:
        "pefts prepare --dataset {params.dataset} --out $(dirname {output}) "
        "--seed {params.seed} {params.root} {params.download} 2> {log}"


# Two birds, one stone: a source task and a downstream task with disjoint classes.
rule prepare_task:
    output:
        path("twobirds", "data_{task}", "manifest.json"),
    params:
        classes=lambda w: ",".join(map(str, EXP["twobirds"][f"{w.task}_classes"])),
        dataset=config["dataset"]["name"],
        seed=config["dataset"]["seed"],
    conda:
        ENV
    log:
        path("logs", "prepare_{task}.log"),
    shell:
        "pefts prepare --dataset {params.dataset} --out $(dirname {output}) "
        "--seed {params.seed} --classes {params.classes} 2> {log}"
