"""The catalog in force, revision by revision: a job keeps the router it started with, the
next job gets the newest, a pinned revision its own, and spare routers are closed."""

from __future__ import annotations

import pytest

from processors.model import ModelClient
from processors.routing import Router, Routers, UnknownCatalogRevision
from schemas import CatalogRevision, encode
from schemas.catalog import Deployment
from topics.templates import TemplateStore


def _push(store: TemplateStore, revision: int, deployments: list[str]) -> None:
    rows = "".join(f"      - {{name: {d}, base_url: http://{d}.example/v1}}\n" for d in deployments)
    source = f"groups:\n  g:\n    deployments:\n{rows}"
    record = CatalogRevision(
        revision=revision,
        source=source,
        origin="models.yaml",
        content_hash=CatalogRevision.hash_of(source),
    )
    assert store.apply(record.key.encode(), encode(record))


def _client(deployment: Deployment) -> ModelClient:
    return ModelClient(deployment.base_url, "-")


def _names(router: Router | None) -> list[str]:
    assert router is not None
    return router.names()


async def test_a_job_keeps_its_router_and_the_next_gets_the_newest() -> None:
    store = TemplateStore()
    built: list[Router] = []
    routers = Routers(store, None, _client, built.append, keep=1)
    async with routers.use() as none:
        assert none is None  # no catalog anywhere: the default endpoint
    _push(store, 1, ["a"])
    async with routers.use() as first:
        _push(store, 2, ["a", "b"])  # lands while the first job calls
        async with routers.use() as second:
            assert _names(second) == ["g@a", "g@b"]
        assert _names(first) == ["g@a"]  # still the one it started with
        assert routers.in_force == 2
    assert len(built) == 2
    async with routers.use(1) as pinned:  # a batch pinned to revision 1
        assert _names(pinned) == ["g@a"]
    with pytest.raises(UnknownCatalogRevision, match="revision 7"):
        async with routers.use(7):
            pass
    await routers.stop()


async def test_spare_routers_are_closed_past_keep() -> None:
    store = TemplateStore()
    routers = Routers(store, None, _client, keep=2)
    for revision in range(1, 6):
        _push(store, revision, [f"d{revision}"])
        async with routers.use():
            pass
    assert routers.revisions() == [4, 5] and routers.in_force == 5
    await routers.stop()


def test_a_bad_catalog_record_is_skipped_not_applied() -> None:
    store = TemplateStore()
    source = "groups:\n  g:\n    deployments: []\n"
    record = CatalogRevision(
        revision=1, source=source, origin="x.yaml", content_hash=CatalogRevision.hash_of(source)
    )
    assert not store.apply(record.key.encode(), encode(record))
    assert store.catalog() is None and store.skipped == 1
