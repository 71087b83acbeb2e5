"""Names shared by the operator's modules: API coordinates, labels, annotations, ports."""

GROUP = "diffusion.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "DiffusionTrainingJob"
PLURAL = "diffusiontrainingjobs"
SINGULAR = "diffusiontrainingjob"
SHORT_NAME = "dtj"
CATEGORY = "ml"

LABEL_JOB_NAME = f"{GROUP}/job-name"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_ROLE = f"{GROUP}/role"
# The owning DiffusionTrainingJob's uid: a job deleted and re-created under the same name never
# mistakes the old one's children (still being garbage-collected) for its own.
LABEL_JOB_UID = f"{GROUP}/job-uid"
# What the attempt was built from (the spec, suspension aside): a suspended attempt whose spec
# changed meanwhile is replaced at resume instead of unsuspended.
ANNOTATION_SPEC_HASH = f"{GROUP}/spec-hash"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "diffusion-operator"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOB_COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"

WORKER_CONTAINER = "trainer"
CONFIG_MOUNT_DIR = "/etc/dtj"
CONFIG_FILE_NAME = "config.yaml"
RENDEZVOUS_PORT = 29500
METRICS_PORT = 9400
METRICS_PORT_NAME = "metrics"
# The Jobs of this many failed attempts stay, with their failed workers' pods and logs (`kubectl
# dtj logs --attempt K`), until the DiffusionTrainingJob is deleted; older ones are deleted.
NUM_FAILED_ATTEMPTS_KEPT = 2
