"""The operator's Kubernetes API client: every request has a timeout, every success is seen.

A request without a timeout can wait forever on a half-open connection; with one, a stuck API
server turns into errors the work loop retries, and the liveness probe sees that no request has
succeeded for a while.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client, config

from diffusion_operator.health import Health

# (connect, read) seconds for ordinary requests; watches pass their own.
DEFAULT_TIMEOUT_S = (5.0, 15.0)


class TimedApiClient(client.ApiClient):
    def __init__(self, configuration: client.Configuration, health: Health) -> None:
        super().__init__(configuration)
        self.health = health

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("_request_timeout") is None:
            kwargs["_request_timeout"] = DEFAULT_TIMEOUT_S
        try:
            response = super().call_api(*args, **kwargs)
        except client.exceptions.ApiException as error:
            if error.status:  # an HTTP answer (429, say): the server is there
                self.health.record_api_success()
            raise
        self.health.record_api_success()  # any answer, errors included: the server is there
        return response


def load_configuration() -> client.Configuration:
    """In-cluster when running in a pod, else $KUBECONFIG or ~/.kube/config."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    return configuration


def new_api_client(health: Health, num_connections: int = 32) -> TimedApiClient:
    """Each watch holds a connection for its lifetime; workers, the lease and node reads need
    theirs: a pool smaller than that reconnects (a TLS handshake) on every request."""
    configuration = load_configuration()
    configuration.connection_pool_maxsize = num_connections
    return TimedApiClient(configuration, health)
