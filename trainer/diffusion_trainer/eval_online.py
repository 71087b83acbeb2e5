"""Evaluation inside the training loop, every `eval.intervalSteps`.

The loop's activity is `evaluating` meanwhile, so neither the watchdog nor the operator takes
the pause for a hang, and the loop leaves its duration out of the throughput. Results go to the
log, the `dtj_trainer_eval_*` metrics and /progress (then status.eval); the grid and report
go under `<checkpoint.uri>/eval/step-NNNNNNNN/`.
"""

from __future__ import annotations

import logging
import time

from diffusion_trainer.assemble import Components
from diffusion_trainer.checkpoint import join_uri
from diffusion_trainer.config import TrainerConfig
from diffusion_trainer.distributed import Runtime, any_rank_true
from diffusion_trainer.eval_setup import build_evaluator
from diffusion_trainer.evaluate import Evaluator
from diffusion_trainer.loop_health import LoopHealth
from diffusion_trainer.metrics import TrainerTelemetry
from diffusion_trainer.model import text_embedding_dim
from diffusion_trainer.preemption import StopRequest
from diffusion_trainer.watchdog import EVALUATING

log = logging.getLogger("diffusion_trainer")
EVAL_DIR = "eval"


def eval_dir(checkpoint_uri: str, step: int) -> str:
    return join_uri(checkpoint_uri, EVAL_DIR, f"step-{step:08d}")


class OnlineEval:
    def __init__(
        self,
        config: TrainerConfig,
        runtime: Runtime,
        components: Components,
        *,
        health: LoopHealth,
        stop: StopRequest,
        telemetry: TrainerTelemetry | None = None,
    ) -> None:
        self.config = config
        self.runtime = runtime
        self.components = components
        self.health = health
        self.stop = stop
        self.telemetry = telemetry
        self.evaluator: Evaluator | None = None

    def due(self, step: int) -> bool:
        interval = self.config.eval.interval_steps
        return interval > 0 and step % interval == 0

    def build(self) -> Evaluator:
        """On first use: loading the VAE, CLIP and Inception costs memory a run without
        evaluation never pays."""
        encoders = self.components.encoders
        return build_evaluator(
            self.config,
            self.runtime,
            text_embedding_dim(self.components.unet_config),
            join_uri(self.config.checkpoint.uri, EVAL_DIR),
            vae=encoders.vae if encoders else None,
            text_encoder=encoders.text if encoders else None,
            train_empty_caption=self.components.empty_caption,
        )

    def run(self, step: int) -> float:
        """Evaluate the current weights; returns the seconds it took (not training time)."""
        started = time.perf_counter()
        resumed_activity = self.health.activity
        self.health.set_activity(EVALUATING)
        try:
            if self.evaluator is None:
                self.evaluator = self.build()
            result = self.evaluator.evaluate(
                self.components.unet,
                self.components.ema,
                step,
                eval_dir(self.config.checkpoint.uri, step),
                should_stop=lambda: any_rank_true(self.stop.requested, self.runtime),
            )
        finally:
            self.health.set_activity(resumed_activity)
        if result is None:
            log.warning("evaluation at step %d abandoned: stop requested", step)
        elif self.telemetry is not None:
            self.telemetry.on_eval(result.to_json(), result.report)
        return time.perf_counter() - started
