rule prepare:
    output:
        DATA,
    params:
        root=f"--root {config['dataset']['root']}" if config["dataset"]["root"] else "",
        download="--download" if config["dataset"]["download"] else "",
    log:
        path("logs", "prepare.log"),
    shell:
        "pefts prepare --dataset {config[dataset][name]} --out $(dirname {output}) "
        "--seed {config[dataset][seed]} {params.root} {params.download} 2> {log}"
