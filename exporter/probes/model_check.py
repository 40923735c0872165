"""Model awareness: never make whoAsr load a model an operator did not allow.

whoAsr loads the offline and punctuation models on demand, on the first request that needs them,
freezing the whole server for minutes and undoing an operator's unload. A model state read seconds
ago says nothing about now, so immediately before every such request the probe reads `/model/info`
afresh (about 1 ms; it blocks nothing) and sends the request only if the model is loaded, or if the
probe has `allow_model_load: true`. When the state cannot be read or does not list the model, the
request is not sent either: the run fails with the read's reason.

The read is part of the run and of its deadline and shows in the trace; its time is excluded from the
run's duration, which measures the request.
"""

from __future__ import annotations

import time

from exporter.health import parse_model_info
from exporter.kinds import KINDS
from exporter.probes import ProbeContext
from exporter.results import Failure


async def ensure_model_loaded(ctx: ProbeContext, kind: str) -> None:
    """Raises Failure (step model_check) unless `kind`'s model is loaded right now or loading it is allowed.

    A no-op for kinds whose requests cannot load a model."""
    spec = KINDS[kind]
    if not spec.loads_on_demand:
        return
    model = spec.model
    if getattr(ctx.settings, "allow_model_load", False):
        ctx.trace(f"model check skipped: probes.{kind}.allow_model_load is true ({model} may be loaded on demand)")
        return
    began = time.monotonic()
    try:
        path = await ctx.client.path("model_info", ctx.remaining(), ctx.trace)
        _, document = await ctx.client.get_json(path, ctx.remaining(), ctx.trace)
        loaded = parse_model_info(document).models_loaded.get(model)
    except Failure as failure:
        raise Failure(failure.reason, f"cannot read the model state ({failure.detail}); not sending the request, "
                      f"since whoAsr would load {model} on demand if it is not loaded",
                      http_status=failure.http_status, step="model_check") from None
    finally:
        ctx.exclude_from_duration(time.monotonic() - began)
    ctx.trace(f"model check: {model} {'loaded' if loaded else 'not loaded' if loaded is False else 'not listed'} "
              f"({(time.monotonic() - began) * 1000:.1f} ms, not counted in the run's duration)")
    if loaded is None:
        raise Failure("bad_response", f"/model/info does not list {model}; not sending the request, since "
                      "whoAsr might load it on demand", step="model_check")
    if not loaded:
        raise Failure(
            "model_not_loaded",
            f"{model} is not loaded; not sending the request, since whoAsr would load it on demand and "
            f"block for minutes (set probes.{kind}.allow_model_load: true to allow that)",
            step="model_check",
        )
