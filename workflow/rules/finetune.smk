rule finetune:
    input:
        data=lambda w: STUDY.data(w.runname),
        base=lambda w: STUDY.base(w.runname),
        weights=lambda w: STUDY.weight_inputs(w.runname),
    output:
        weights=STUDY.model(),
        meta=STUDY.model().replace(".safetensors", ".json"),
    params:
        method=run_field("method"),
        hparams=run_field("hparams"),
        train=run_field("train"),
        device=DEVICE,
    threads: config["threads"]
    resources:
        gpu=config["gpus_per_job"],
    conda:
        ENV
    log:
        path("logs", "finetune", "{runname}_sigma{sigma}.log"),
    shell:
        "pefts finetune --data {input.data} --base {input.base} --method {params.method} "
        "--sigma {wildcards.sigma} --hparams {params.hparams:q} --train {params.train:q} "
        "--out {output.weights} --device {params.device} --gpus {resources.gpu} --force 2> {log}"
