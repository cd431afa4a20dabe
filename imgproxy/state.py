"""The app object's typed state: every long-lived part, wired once in app.py."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from imgproxy.cache.budget import CacheBudget
from imgproxy.cache.hot import HotFiles
from imgproxy.cache.layout import CacheLayout
from imgproxy.images.renditions import Renditions
from imgproxy.images.service import ImageService
from imgproxy.jobs.admission import Admission
from imgproxy.jobs.runner import JobContext
from imgproxy.jobs.workers import Workers
from imgproxy.metadata.accounts import Accounts
from imgproxy.metadata.catalog import Catalog
from imgproxy.metadata.shop import Shop
from imgproxy.metadata.store import MetadataStore
from imgproxy.metrics import Metrics
from imgproxy.origins.base import Origin
from imgproxy.origins.sources import SourceFetcher
from imgproxy.processing.pool import ProcessingPool
from imgproxy.settings import Settings
from imgproxy.web.auth import FailedAuth
from imgproxy.web.replay import Replays


@dataclass
class AppState:
    settings: Settings
    store: MetadataStore
    layout: CacheLayout
    pool: ProcessingPool
    service: ImageService
    renditions: Renditions
    workers: Workers
    metrics: Metrics
    origins: list[Origin]
    job_context: JobContext
    accounts: Accounts
    catalog: Catalog
    shop: Shop
    fetcher: SourceFetcher
    budget: CacheBudget
    admission: Admission
    hot: HotFiles
    replays: Replays
    auth_failures: FailedAuth


STATE = web.AppKey("state", AppState)
