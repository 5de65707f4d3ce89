"""Training: the one loop (``trainer``), its Ray Train worker (``worker``), and the launch layer:
``launcher`` dispatches to the local driver (``local``, with ``preflight`` checks and MLflow
``bookkeeping``), the Ray Jobs launcher (``ray_jobs``) or the KubeRay launcher (``kuberay``), which
share ``job`` (result, environment contract, run storage) and ``remote`` (staging, collecting)."""
