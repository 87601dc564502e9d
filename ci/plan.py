"""`pipeline plan`: the entries as a GitHub Actions matrix, one job per entry, with the cache keys `pipeline run`
uses locally, so `actions/cache` restores exactly the engine directories a local run would reuse."""

from __future__ import annotations

from . import cache
from .spec import Entry, PipelineSpec, Runner


def plan(spec: PipelineSpec, runner: Runner | None = None, names: list[str] | None = None) -> dict:
    """{"include": [{entry, runner, source, target, dtype, ..., cache_key, restore_key}, ...]}.

    cache_key names one entry's engine directory and record at one engine key and check key; restore_key (a
    prefix) also restores an engine whose check settings changed, so only the check runs again. Sources with a
    declared sha256 are not read: the planning job need not hold the checkpoints.
    """
    entries = [e for e in spec.select(names) if runner is None or e.runner is runner]
    digests = cache.resolve_sources(list({e.source.name: e.source for e in entries}.values()), spec.path, False)
    return {"include": [_job(e, digests[e.source.name], spec) for e in entries]}


def _job(entry: Entry, digest: str, spec: PipelineSpec) -> dict:
    engine = cache.engine_key(entry, digest)
    check = cache.check_key(entry, engine, spec.check)
    restore = f"llamaport-engine-{entry.name}-{engine[:20]}-"
    return {
        "entry": entry.name,
        "runner": str(entry.runner),
        "source": entry.source.name,
        **entry.export.key_dict(),
        "device": str(entry.device),
        "engine_key": engine,
        "check_key": check,
        "cache_key": restore + check[:20],
        "restore_key": restore,
    }
