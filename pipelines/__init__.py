"""Kubeflow pipelines built from ``components/``; their compiled YAML sits beside them for upload."""
