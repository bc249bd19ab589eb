"""kopf handlers of ElasticJob (elasticjobs.tessera.dev)."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from tessera.api.models import GROUP, VERSION, ElasticJob
from tessera.operator.handlers import delete_pods, report_invalid, wake


# an event handler, not create/update handlers: those make kopf store the whole spec in an
# annotation after each change (its diff base), which fails for specs near the 256 KiB
# annotation limit and then blocks even the deletion; the loop needs no diff, only a wake-up
@kopf.on.event(GROUP, VERSION, ElasticJob.plural)
async def elasticjob_changed(body: kopf.Body, type: str | None, memo: Any,
                         logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    if type != "DELETED":
        report_invalid(ElasticJob, body, logger, memo)
    wake(memo)


# optional: no finalizer (one write fewer per workload, and a deletion never waits for the
# operator); kopf drops the finalizer older versions added.  The pods of a workload that is
# gone are deleted by the scheduling loop (orphans) or by the garbage collector
@kopf.on.delete(GROUP, VERSION, ElasticJob.plural, optional=True)
async def elasticjob_deleted(body: kopf.Body, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    await delete_pods(memo, body.metadata.namespace or "default", body.metadata.uid or "", logger)
