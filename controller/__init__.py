"""Comptroller: FinOps admission controller and operator for ML workloads on Kubernetes."""

__version__ = "0.1.0"
