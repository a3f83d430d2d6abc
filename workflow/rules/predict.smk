# Segment new volumes: put images in predict/{name}.nii.gz and request
# results/predictions/{model}/{name}.nii.gz. The prediction is the ensemble (mean softmax) of
# the k fold models trained with the first seed. Not part of `rule all`.


wildcard_constraints:
    name=r"[^/]+",


rule predict:
    input:
        image=layout.PREDICT_IMAGE,
        models=expand(layout.MODEL, fold=FOLDS, seed=SEEDS[:1], allow_missing=True),
    output:
        label=layout.PREDICTION,
    log:
        "logs/predict/{model}_{name}.log",
    benchmark:
        "results/benchmarks/predict/{model}_{name}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        code=code_hash("reproseg.predict", "reproseg.data", "reproseg.models"),
    script:
        "../../scripts/predict.py"
