"""Data sources: each turns its input (synthetic generator, local folder, OMERO) into
case records with files under results/data/raw, which the manifest then describes."""
