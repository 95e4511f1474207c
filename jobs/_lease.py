"""Lease bookkeeping for the runs a scheduler holds: when to renew, when a lease is lost."""

from __future__ import annotations

import uuid

import attrs


@attrs.define
class HeldLease:
    """A lease this scheduler holds in the store for one running job."""

    job_id: uuid.UUID
    run_id: str
    lease_seconds: float
    renewed_at: float

    @property
    def expires_at(self) -> float:
        return self.renewed_at + self.lease_seconds

    def renewal_due(self, now: float) -> bool:
        """Renew once a third of the lease has passed: two renewals may fail before it lapses."""
        return now - self.renewed_at >= self.lease_seconds / 3
