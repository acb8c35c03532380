"""Python client for the kdserve REST API.

from client import KDServeClient

with KDServeClient() as kd:  # KDSERVE_URL / KDSERVE_API_KEY, or $KDSERVE_HOME/api-key
    data = kd.wait_for("datasets", kd.upload_dataset("train.npz")["id"])
    job = kd.submit_job(dataset_id=data["id"], student=spec, config={"method": "scratch"})
    kd.wait_for("jobs", job["id"])
    kd.download_all(job["id"], "out/")
"""

from client.client import DEFAULT_URL, FINAL_JOB_STATES, KDServeClient, default_api_key
from client.errors import KDServeAPIError, KDServeClientError, KDServeConnectionError

__all__ = [
    "DEFAULT_URL",
    "FINAL_JOB_STATES",
    "KDServeAPIError",
    "KDServeClient",
    "KDServeClientError",
    "KDServeConnectionError",
    "default_api_key",
]
