rule prepare:
    output:
        STUDY.setups()["main"]["data"],
    params:
        root=f"--root {config['dataset']['root']}" if config["dataset"]["root"] else "",
        download="--download" if config["dataset"]["download"] else "",
    log:
        path("logs", "prepare.log"),
    shell:
        "pefts prepare --dataset {config[dataset][name]} --out $(dirname {output}) "
        "--seed {config[dataset][seed]} {params.root} {params.download} 2> {log}"


# Two birds, one stone: a source task and a downstream task with disjoint classes.
rule prepare_task:
    output:
        path("twobirds", "data_{task}", "manifest.json"),
    params:
        classes=lambda w: ",".join(map(str, EXP["twobirds"][f"{w.task}_classes"])),
    log:
        path("logs", "prepare_{task}.log"),
    shell:
        "pefts prepare --dataset {config[dataset][name]} --out $(dirname {output}) "
        "--seed {config[dataset][seed]} --classes {params.classes} 2> {log}"
