"""Deterministic names of a job's children (idempotent creation depends on them)."""

from __future__ import annotations


def config_map_name(job_name: str) -> str:
    return f"{job_name}-config"


def service_name(job_name: str) -> str:
    return f"{job_name}-workers"


def attempt_job_name(job_name: str, attempt: int) -> str:
    return f"{job_name}-a{attempt}"


def master_address(job_name: str, attempt: int, namespace: str) -> str:
    """DNS name of worker 0 of an attempt: <job>-0.<headless service>.<namespace>.svc."""
    return f"{attempt_job_name(job_name, attempt)}-0.{service_name(job_name)}.{namespace}.svc"
