"""kopf handlers of ElasticJob (elasticjobs.tessera.dev)."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from tessera.api.models import GROUP, VERSION, ElasticJob
from tessera.operator.handlers import delete_pods, validate, wake


@kopf.on.resume(GROUP, VERSION, ElasticJob.plural)
@kopf.on.create(GROUP, VERSION, ElasticJob.plural)
@kopf.on.update(GROUP, VERSION, ElasticJob.plural, field="spec")
async def elasticjob_changed(body: kopf.Body, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    validate(ElasticJob, body, logger)
    wake(memo)


@kopf.on.delete(GROUP, VERSION, ElasticJob.plural)
async def elasticjob_deleted(body: kopf.Body, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    await delete_pods(memo, body.metadata.namespace or "default", body.metadata.uid or "", logger)
