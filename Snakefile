# pefts: PEFTSmoothing and randomized-smoothing certification, end to end.
# The embedded default (config.yaml) runs offline on a laptop CPU; presets live in configs/.

configfile: "config.yaml"



include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/base.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/certify.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        main_outputs(),
    default_target: True
