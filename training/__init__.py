"""Training: data loading, the feature contract, pipelines and evaluation."""
