rule finetune:
    input:
        data=DATA,
        base=BASE,
    output:
        weights=model_path(),
        meta=model_path().replace(".safetensors", ".json"),
    params:
        hparams=method_json("hparams"),
        train=method_json("train"),
    threads: config["threads"]
    resources:
        gpu=config["gpus_per_job"],
    log:
        path("logs", "finetune", "{method}_sigma{sigma}.log"),
    shell:
        "pefts finetune --data {input.data} --base {input.base} --method {wildcards.method} "
        "--sigma {wildcards.sigma} --hparams {params.hparams:q} --train {params.train:q} "
        "--out {output.weights} --device {config[device]} --force 2> {log}"
