"""`python -m localnode --kubeconfig K [--node-name N] [--state-dir D] ...` (root only).

Runs until SIGTERM/SIGINT; then kills every pod process it started and removes its Node.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
from pathlib import Path

from localnode.agent import Agent, AgentSettings
from localnode.logs import state_dir_from_env


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="localnode", description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node-name", default=f"local-{socket.gethostname()}")
    parser.add_argument("--state-dir", type=Path, default=state_dir_from_env())
    parser.add_argument(
        "--venv-bin",
        type=Path,
        default=Path(sys.executable).parent,
        help="put first on the pods' PATH (default: this Python's bin dir)",
    )
    parser.add_argument("--bridge", default="dtj-br0")
    parser.add_argument("--subnet", default="10.77.0.0/24")
    parser.add_argument("--netns-prefix", default="dtj")
    parser.add_argument(
        "--no-taint", action="store_true", help="take any pod, not only those tolerating the taint"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [localnode] %(message)s")
    from kubernetes import config

    settings = AgentSettings(
        node_name=args.node_name,
        state_dir=args.state_dir,
        venv_bin=args.venv_bin,
        bridge_name=args.bridge,
        subnet=args.subnet,
        netns_prefix=args.netns_prefix,
        tainted=not args.no_taint,
    )
    agent = Agent(settings, config.new_client_from_config(config_file=args.kubeconfig))
    stop = threading.Event()
    for signo in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signo, lambda *_: stop.set())
    runner = threading.Thread(target=run_agent, args=(agent, stop), daemon=True)
    runner.start()
    stop.wait()
    agent.shutdown()
    return 0


def run_agent(agent: Agent, stop: threading.Event) -> None:
    try:
        agent.run_forever()
    except Exception:
        logging.getLogger("localnode").exception("agent failed")
    finally:
        stop.set()


if __name__ == "__main__":
    sys.exit(main())
