"""Local Kubernetes control plane for tests: fake GPU node pools and waiting helpers."""
