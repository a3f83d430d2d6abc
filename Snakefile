# Shim so that `snakemake` works from the repository root; the workflow lives in workflow/.


include: "workflow/Snakefile"


# Re-declared so that the default target is `all` whatever the include order.
default_target: True
