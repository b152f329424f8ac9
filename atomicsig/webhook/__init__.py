"""``atomicsig webhook``: a Kubernetes admission webhook enforcing (or auditing) the node policy at deploy time."""
