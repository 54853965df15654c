# pefts: PEFTSmoothing and randomized-smoothing certification, end to end.
# The embedded default (config.yaml) runs offline on a laptop CPU; presets live in configs/.

# A config given with --configfile is the whole run: Snakemake would merge it key by key
# into config.yaml, leaking the default's model and training options into a preset.
# So config.yaml loads only when no --configfile was given (plain --config k=v still
# overrides it); a second --configfile overlays the first, key by key.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/base.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/certify.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/docs.smk"


rule all:
    input:
        main_outputs(),
    default_target: True
