rule train_base:
    input:
        data=STUDY.setups()["main"]["data"],
        # the fetched copy of hub weights (weights.smk), or the config's own file
        pretrained=[f for f in [STUDY.base_pretrained_file()] if f],
    output:
        weights=STUDY.setups()["main"]["base"],
        meta=STUDY.setups()["main"]["base"].replace(".safetensors", ".json"),
    params:
        arch=config["base"]["arch"],
        input_size=config["base"]["input_size"],
        device=DEVICE,
        model_kwargs=json.dumps(config["base"]["model_kwargs"]),
        mean=",".join(map(str, config["base"]["mean"])),
        std=",".join(map(str, config["base"]["std"])),
        train=json.dumps(config["base"]["train"]),
        pretrained_file=(
            f"--pretrained-file {STUDY.base_pretrained_file()}"
            if STUDY.base_pretrained_file()
            else ""
        ),
    threads: config["threads"]
    resources:
        gpu=config["gpus_per_job"],
    conda:
        ENV
    log:
        path("logs", "train_base.log"),
    shell:
        "pefts train-base --data {input.data} --out {output.weights} --arch {params.arch} "
        "--input-size {params.input_size} --model-kwargs {params.model_kwargs:q} "
        "--mean {params.mean} --std {params.std} --train {params.train:q} "
        "{params.pretrained_file} --device {params.device} --gpus {resources.gpu} --force 2> {log}"


# the source-task classifier of two birds, one stone: same network, source classes only,
# trained with experiments.twobirds.source_train (the base recipe when unset: a base kept
# as pretrained with 0 epochs would leave the source task a random head)
use rule train_base as train_base_source with:
    input:
        data=path("twobirds", "data_source", "manifest.json"),
        pretrained=[f for f in [STUDY.base_pretrained_file()] if f],
    output:
        weights=STUDY.setups()["oneround"]["base"],
        meta=STUDY.setups()["oneround"]["base"].replace(".safetensors", ".json"),
    params:
        train=json.dumps(EXP["twobirds"]["source_train"] or config["base"]["train"]),
    log:
        path("logs", "train_base_source.log"),


# round one of two: adapt the source classifier to the target task on clean data
rule adapt_base:
    input:
        data=STUDY.setups()["tworound"]["data"],
        source=STUDY.setups()["oneround"]["base"],
    output:
        weights=STUDY.setups()["tworound"]["base"],
        meta=STUDY.setups()["tworound"]["base"].replace(".safetensors", ".json"),
    params:
        train=json.dumps(EXP["twobirds"]["adapt_train"]),
        device=DEVICE,
    threads: config["threads"]
    resources:
        gpu=config["gpus_per_job"],
    conda:
        ENV
    log:
        path("logs", "adapt_base.log"),
    shell:
        "pefts adapt-base --data {input.data} --source {input.source} --out {output.weights} "
        "--train {params.train:q} --device {params.device} --gpus {resources.gpu} --force 2> {log}"
