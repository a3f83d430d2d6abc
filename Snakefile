# Shim so that `snakemake` works from the repository root; the workflow lives in workflow/.
# The default target is `rule all` of workflow/Snakefile (declared there with default_target).


include: "workflow/Snakefile"
