"""Deployment: image build scripts, Kubernetes manifests and the environment template (the
worker lifecycle is api/lifecycle.py)."""
