"""Deployment: worker lifecycle (drain on SIGTERM, retries to a remote model service), image
build scripts, Kubernetes manifests and the environment template."""
