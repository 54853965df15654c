# External weights (timm bases, the black box's coordinator encoder) are fetched once, on
# the submit host (a local rule: cluster compute nodes are often offline), into
# results/weights with their sha256; every compute job reads those local files.
EXTERNAL_FILES = STUDY.external_files()

if EXTERNAL_FILES:

    localrules:
        fetch_weights,

    rule fetch_weights:
        # after the data is prepared: a missing dataset is the first thing to report
        priority: -1
        output:
            EXTERNAL_FILES,
        params:
            weights=" ".join(f"--weight {w.label()}" for w in external_weights(config)),
            results=STUDY.results,
        conda:
            ENV
        log:
            path("logs", "fetch_weights.log"),
        shell:
            "pefts fetch-weights {params.weights} --results {params.results} 2> {log}"
