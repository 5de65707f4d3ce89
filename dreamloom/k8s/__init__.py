"""Kubernetes objects dreamloom renders (RayJobs for training) and their schema checks.

Objects are plain dicts rendered from typed settings and validated against the real schemas
(the KubeRay CRDs ship in ``crds/``); the code that talks to a cluster stays thin.
"""
