"""Publishing: MLflow tracking and registry, BioImage.IO packages."""
