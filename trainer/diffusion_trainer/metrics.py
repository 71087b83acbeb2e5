"""Trainer telemetry: Prometheus metrics and the JSON progress endpoint.

Served by local rank 0 of every worker pod on `metrics.port`: `/metrics` (Prometheus text) and
`/progress` (JSON the operator folds into the job status). Step metrics are filled on global rank
0, which sees the global loss and throughput; every pod reports its checkpoints and GPU memory.
Labels are fixed per run (dtj_job, dtj_namespace, dtj_attempt): no unbounded label values. The
`dtj_` prefix keeps them apart from the target labels a Prometheus adds (`job` is the scrape job,
`namespace` the pod's), so no scrape config has to honour or rename them.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from diffusion_trainer.config import RunInfo
from diffusion_trainer.report import StepReport

RUN_LABELS = ("dtj_job", "dtj_namespace", "dtj_attempt")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}
STEP_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
CHECKPOINT_BUCKETS_S = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class TrainerMetrics:
    """The metric families of one run, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        gauge, counter, histogram = self._gauge, self._counter, self._histogram
        self.step = gauge("dtj_trainer_step", "Optimizer steps completed.")
        self.total_steps = gauge("dtj_trainer_total_steps", "Optimizer steps to train.")
        self.samples = counter("dtj_trainer_samples", "Images trained on by this attempt.")
        self.images_per_second = gauge(
            "dtj_trainer_images_per_second", "Training throughput, all GPUs together."
        )
        self.images_per_second_per_gpu = gauge(
            "dtj_trainer_images_per_second_per_gpu", "Training throughput per GPU (rank)."
        )
        self.mfu = gauge("dtj_trainer_mfu_ratio", "Model FLOPs utilisation (0-1).")
        self.loss = gauge("dtj_trainer_loss", "Training loss, mean over the last log interval.")
        self.learning_rate = gauge("dtj_trainer_learning_rate", "Current learning rate.")
        self.grad_norm = gauge("dtj_trainer_grad_norm", "Gradient norm before clipping.")
        self.step_phase = histogram(
            "dtj_trainer_step_phase_seconds",
            "Time per optimizer step by phase: data_wait, compute (forward and backward), "
            "optimizer (clipping, optimizer step, EMA).",
            STEP_BUCKETS_S,
            extra=("phase",),
        )
        self.checkpoint_save = histogram(
            "dtj_trainer_checkpoint_save_seconds", "Checkpoint save duration.", CHECKPOINT_BUCKETS_S
        )
        self.checkpoint_load = histogram(
            "dtj_trainer_checkpoint_load_seconds", "Checkpoint load duration.", CHECKPOINT_BUCKETS_S
        )
        self.last_checkpoint_step = gauge(
            "dtj_trainer_last_checkpoint_step", "Step of the last committed checkpoint."
        )
        self.last_checkpoint_time = gauge(
            "dtj_trainer_last_checkpoint_timestamp_seconds",
            "Unix time of the last committed checkpoint.",
        )
        self.gpu_memory_allocated = gauge(
            "dtj_trainer_gpu_memory_allocated_bytes", "GPU memory allocated by tensors."
        )
        self.gpu_memory_peak = gauge(
            "dtj_trainer_gpu_memory_peak_bytes", "Peak GPU memory allocated since start."
        )
        self.eval_fid = gauge(
            "dtj_trainer_eval_fid", "FID of the last evaluation.", extra=("guidance_scale",)
        )
        self.eval_clip = gauge(
            "dtj_trainer_eval_clip_score",
            "CLIP score of the last evaluation.",
            extra=("guidance_scale",),
        )
        self.goodput = gauge(
            "dtj_trainer_goodput_ratio",
            "Productive step time over wall time since the attempt started.",
        )
        self.nonfinite_losses = counter(
            "dtj_trainer_nonfinite_losses", "Log intervals whose loss was NaN or infinite."
        )
        self.nonfinite_skipped_steps = counter(
            "dtj_trainer_nonfinite_skipped_steps",
            "Optimizer steps skipped because the gradient norm was NaN or infinite.",
        )

    def _gauge(self, name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, (*RUN_LABELS, *extra), registry=self.registry)

    def _counter(self, name: str, doc: str) -> Counter:
        return Counter(name, doc, RUN_LABELS, registry=self.registry)

    def _histogram(
        self, name: str, doc: str, buckets: tuple[float, ...], extra: tuple[str, ...] = ()
    ) -> Histogram:
        return Histogram(name, doc, (*RUN_LABELS, *extra), buckets=buckets, registry=self.registry)


def exposition_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name a registry can expose (with _total/_bucket/... suffixes)."""
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in _SUFFIXES.get(family.type, ("",))
    }


def metric_names() -> set[str]:
    """Every sample name the trainer can expose."""
    return exposition_names(TrainerMetrics().registry)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TrainerTelemetry:
    """Records a run's progress into metrics and serves them with the progress JSON."""

    def __init__(self, run: RunInfo, max_steps: int, global_batch_size: int, world_size: int):
        self.metrics = TrainerMetrics()
        self.labels = {
            "dtj_job": run.job_name,
            "dtj_namespace": run.namespace,
            "dtj_attempt": str(run.attempt),
        }
        self.global_batch_size = global_batch_size
        self.world_size = world_size
        self.started_s = time.monotonic()
        self.productive_s = 0.0
        self.counted_step = 0  # samples are counted from this attempt's first step
        self.lock = threading.Lock()
        self.state: dict[str, Any] = {
            "step": None,
            "totalSteps": max_steps,
            "checkpoint": None,
            "activity": "starting",
        }
        self.server: ThreadingHTTPServer | None = None
        self._set(self.metrics.total_steps, max_steps)
        # From 0, so that rate() and increase() see the first skips.
        self.metrics.nonfinite_skipped_steps.labels(**self.labels)

    def _set(self, gauge: Gauge, value: float, **extra: str) -> None:
        gauge.labels(**self.labels, **extra).set(value)

    def on_step(self, report: StepReport) -> None:
        """A StepSink: one call per log interval on global rank 0. Atomic for scrapes, so
        step and samples always agree."""
        with self.lock:
            self._record_step(report)

    def _record_step(self, report: StepReport) -> None:
        m = self.metrics
        num_new_steps = max(report.step - self.counted_step, 0)
        self.counted_step = report.step
        m.samples.labels(**self.labels).inc(num_new_steps * self.global_batch_size)
        self._set(m.step, report.step)
        self._set(m.images_per_second, report.images_per_s)
        self._set(m.images_per_second_per_gpu, report.images_per_s / self.world_size)
        self._set(m.learning_rate, report.lr)
        if report.mfu is not None:
            self._set(m.mfu, report.mfu)
        if report.grad_norm is not None:
            self._set(m.grad_norm, report.grad_norm)
        if report.loss == report.loss and abs(report.loss) != float("inf"):
            self._set(m.loss, report.loss)
        else:
            m.nonfinite_losses.labels(**self.labels).inc()
        m.nonfinite_skipped_steps.labels(**self.labels).inc(report.skipped_steps)
        compute_s = max(report.step_time_s - report.data_wait_s - report.optimizer_s, 0.0)
        m.step_phase.labels(**self.labels, phase="data_wait").observe(report.data_wait_s)
        m.step_phase.labels(**self.labels, phase="compute").observe(compute_s)
        m.step_phase.labels(**self.labels, phase="optimizer").observe(report.optimizer_s)
        self.productive_s += (compute_s + report.optimizer_s) * num_new_steps
        wall_s = max(time.monotonic() - self.started_s, 1e-9)
        self._set(m.goodput, min(self.productive_s / wall_s, 1.0))
        self._record_gpu_memory()
        self.state.update(
            step=report.step,
            imagesPerSecond=report.images_per_s,
            loss=report.loss if report.loss == report.loss else None,
            etaSeconds=_eta_s(report),
            updatedAt=utc_now(),
        )

    def on_checkpoint_saved(self, step: int, uri: str, duration_s: float) -> None:
        m = self.metrics
        m.checkpoint_save.labels(**self.labels).observe(duration_s)
        self._set(m.last_checkpoint_step, step)
        self._set(m.last_checkpoint_time, time.time())
        with self.lock:
            self.state["checkpoint"] = {"uri": uri, "step": step, "time": utc_now()}

    def on_checkpoint_loaded(self, step: int, uri: str, duration_s: float) -> None:
        self.metrics.checkpoint_load.labels(**self.labels).observe(duration_s)
        self.counted_step = step
        with self.lock:
            self.state.update(step=step, checkpoint={"uri": uri, "step": step, "time": utc_now()})

    def set_activity(self, activity: str) -> None:
        """starting | training | checkpointing | evaluating | stopping (see watchdog.py)."""
        with self.lock:
            self.state["activity"] = activity

    def on_eval(self, result: dict[str, Any], report: str | None) -> None:
        """An evaluation's results (EvalResult.to_json): gauges per guidance scale, and
        /progress's `eval` (latest values, step, grid) for status.eval."""
        for scale, value in result["fid"].items():
            self._set(self.metrics.eval_fid, value, guidance_scale=scale)
        for scale, value in result["clipScore"].items():
            self._set(self.metrics.eval_clip, value, guidance_scale=scale)
        latest = {
            "step": result["step"],
            "fid": result["fid"],
            "clipScore": result["clipScore"],
            "numSamples": result["numSamples"],
            "seconds": result["seconds"],
            "grid": result["grid"],
            "report": report,
            "time": utc_now(),
        }
        with self.lock:
            self.state["eval"] = latest

    def _record_gpu_memory(self) -> None:
        import torch

        if torch.cuda.is_available():
            self._set(self.metrics.gpu_memory_allocated, torch.cuda.memory_allocated())
            self._set(self.metrics.gpu_memory_peak, torch.cuda.max_memory_allocated())

    def progress(self) -> dict[str, Any]:
        with self.lock:
            return dict(self.state)

    def serve(self, port: int, host: str = "0.0.0.0") -> int:  # all interfaces of the pod
        """Serve /metrics and /progress in a daemon thread; returns the bound port."""
        self.server = ThreadingHTTPServer((host, port), _handler_for(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="dtj-metrics", daemon=True).start()
        return int(self.server.server_address[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _eta_s(report: StepReport) -> float | None:
    if report.step_time_s <= 0:
        return None
    return (report.max_steps - report.step) * report.step_time_s


def _handler_for(telemetry: TrainerTelemetry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                with telemetry.lock:
                    body = generate_latest(telemetry.metrics.registry)
                self._reply(200, CONTENT_TYPE_LATEST, body)
            elif self.path.startswith("/progress"):
                body = json.dumps(telemetry.progress()).encode()
                self._reply(200, "application/json", body)
            else:
                self._reply(404, "text/plain", b"not found\n")

        def _reply(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # scrapes are not worth a log line
            return

    return Handler
