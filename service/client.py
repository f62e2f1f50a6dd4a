"""A small HTTP client for the TicketGuard API (used by the CLI and the demo)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx


class ClientError(Exception):
    """The server answered with an error (its code and message), or could not be reached."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class TicketGuardClient:
    def __init__(self, url: str, api_key: str | None, *, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(0, "unreachable", f"{self.http.base_url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                error = {"code": "http_error", "message": response.text[:200]}
            raise ClientError(response.status_code, error["code"], error["message"])
        return response.json()

    def register(self, model: Path, *, arch: str, dataset: str, name: str, signature: str = "auto",
                 recovery_epochs: int = 2, trigger_set: bool = False) -> dict:
        data = {"arch": arch, "dataset": dataset, "name": name, "signature": signature,
                "recovery_epochs": str(recovery_epochs), "trigger_set": str(trigger_set).lower()}
        with open(model, "rb") as handle:
            return self._call("POST", "/v1/tickets", data=data,
                              files={"model": (model.name, handle, "application/octet-stream")})

    def verify(self, model: Path | None = None, *, ticket_id: str | None = None, mode: str | None = None,
               endpoint: str | None = None, answers: Path | None = None) -> dict:
        """One suspect: a model file, a prediction endpoint's URL, or a JSON file of answers."""
        data = {key: value for key, value in (("ticket_id", ticket_id), ("mode", mode), ("endpoint", endpoint))
                if value}
        with ExitStack() as stack:
            files = {field: (path.name, stack.enter_context(open(path, "rb")), "application/octet-stream")
                     for field, path in (("model", model), ("answers", answers)) if path is not None}
            return self._call("POST", "/v1/verifications", data=data, files=files or None)

    def download_trigger_set(self, ticket_id: str, destination: Path) -> None:
        """Save your ticket's trigger set (.npz: x, y) to `destination`."""
        self._download(f"/v1/tickets/{ticket_id}/trigger-set", destination)

    def find(self, *, arch: str, dataset: str, method: str, hyperparameters: dict, seed: int | None = None) -> dict:
        """Queue a ticket search; without `seed` the server draws one (the job's result says which)."""
        body = {"arch": arch, "dataset": dataset, "method": method, "hyperparameters": hyperparameters}
        return self._call("POST", "/v1/tickets/find", json=body | ({"seed": seed} if seed is not None else {}))

    def finders(self) -> dict:
        return self._call("GET", "/v1/finders")

    def download_found(self, job_id: str, destination: Path, *, form: str = "plain") -> None:
        """Save the ticket a find_ticket job found (safetensors) to `destination`."""
        self._download(f"/v1/jobs/{job_id}/ticket", destination, params={"form": form})

    def download_ticket(self, ticket_id: str, destination: Path) -> None:
        """Save a registered ticket (with its signature, if it has one) to `destination`."""
        self._download(f"/v1/tickets/{ticket_id}/model", destination)

    def _download(self, path: str, destination: Path, **kwargs: Any) -> None:
        with self.http.stream("GET", path, **kwargs) as response:
            if response.status_code >= 400:
                response.read()
                error = response.json().get("error", {})
                raise ClientError(response.status_code, error.get("code", "http_error"), error.get("message", ""))
            with open(destination, "wb") as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)

    def attack(self, ticket_id: str, body: dict) -> dict:
        """Ask for a robustness report on one of your tickets (see `AttackRequest`)."""
        return self._call("POST", f"/v1/tickets/{ticket_id}/attacks", json=body)

    def attack_report(self, report_id: str) -> dict:
        return self._call("GET", f"/v1/attack-reports/{report_id}")

    def download(self, path: str, destination: Path, **params: Any) -> None:
        """Save what GET `path` answers (a plot, a CSV) to `destination`."""
        self._download(path, destination, params=params or None)

    def register_found(self, job_id: str, *, name: str) -> dict:
        return self._call("POST", "/v1/tickets", data={"name": name, "from_job": job_id})

    def ticket(self, ticket_id: str) -> dict:
        return self._call("GET", f"/v1/tickets/{ticket_id}")

    def verification(self, verification_id: str) -> dict:
        return self._call("GET", f"/v1/verifications/{verification_id}")

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def audit(self, **params: Any) -> dict:
        return self._call("GET", "/v1/audit", params={k: v for k, v in params.items() if v is not None})

    def audit_verify(self) -> dict:
        return self._call("GET", "/v1/audit/verify")

    def tree_head(self) -> dict:
        return self._call("GET", "/v1/audit/tree-head")

    def public_key(self) -> dict:
        return self._call("GET", "/v1/audit/public-key")

    def consistency_proof(self, first: int, second: int) -> dict:
        return self._call("GET", "/v1/audit/proofs/consistency", params={"first": first, "second": second})

    def alerts(self, **params: Any) -> dict:
        return self._call("GET", "/v1/alerts", params={k: v for k, v in params.items() if v is not None})

    def ticket_receipt(self, ticket_id: str) -> dict:
        return self._call("GET", f"/v1/tickets/{ticket_id}/receipt")

    def wait(self, job_id: str, *, on_progress: Callable[[dict], None] | None = None,
             timeout: float = 3600.0, interval: float = 0.25) -> dict:
        """Poll a job until it ends; returns its final state."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress:
                on_progress(job)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            if time.monotonic() > deadline:
                raise ClientError(0, "timeout", f"job {job_id} still {job['status']} after {timeout:.0f}s")
            time.sleep(interval)
