"""kopf handlers of InferenceService (inferenceservices.tessera.dev)."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from tessera.api.models import GROUP, VERSION, InferenceService
from tessera.operator.handlers import delete_pods, validate, wake


@kopf.on.resume(GROUP, VERSION, InferenceService.plural)
@kopf.on.create(GROUP, VERSION, InferenceService.plural)
@kopf.on.update(GROUP, VERSION, InferenceService.plural, field="spec")
async def inferenceservice_changed(body: kopf.Body, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    # spec.replicas changes (kubectl scale, an HPA) arrive here too
    validate(InferenceService, body, logger)
    wake(memo)


@kopf.on.delete(GROUP, VERSION, InferenceService.plural)
async def inferenceservice_deleted(body: kopf.Body, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    await delete_pods(memo, body.metadata.namespace or "default", body.metadata.uid or "", logger)
