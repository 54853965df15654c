rule train_base:
    input:
        DATA,
    output:
        weights=BASE,
        meta=BASE.replace(".safetensors", ".json"),
    params:
        model_kwargs=json.dumps(config["base"]["model_kwargs"]),
        mean=",".join(map(str, config["base"]["mean"])),
        std=",".join(map(str, config["base"]["std"])),
        train=json.dumps(config["base"]["train"]),
        pretrained="--pretrained" if config["base"]["pretrained"] else "",
        pretrained_file=(
            f"--pretrained-file {config['base']['pretrained_file']}"
            if config["base"]["pretrained_file"]
            else ""
        ),
    threads: config["threads"]
    resources:
        gpu=config["gpus_per_job"],
    log:
        path("logs", "train_base.log"),
    shell:
        "pefts train-base --data {input} --out {output.weights} --arch {config[base][arch]} "
        "--input-size {config[base][input_size]} --model-kwargs {params.model_kwargs:q} "
        "--mean {params.mean} --std {params.std} --train {params.train:q} "
        "{params.pretrained} {params.pretrained_file} --device {config[device]} --force 2> {log}"
