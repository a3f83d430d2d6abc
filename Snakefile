# Shim so that `snakemake` works from the repository root; the workflow lives in workflow/.
# Snakemake restores the default target after an include, so it is re-declared here: the
# same targets as `rule all` of workflow/Snakefile.


include: "workflow/Snakefile"


rule default:
    default_target: True
    input:
        rules.all.input,
