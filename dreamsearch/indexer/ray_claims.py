"""The run's claims on contents with ``--engine ray``: one ``pipeline.Contents`` held by a
registry actor on the driver's node (it reads the catalog the driver writes), asked by
the decode tasks on every node and by the driver alike, through the same
``ClaimRegistry`` calls a local run makes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dreamsearch.errors import DreamsearchError
from dreamsearch.indexer.pipeline import Answer, Contents

if TYPE_CHECKING:
    from dreamsearch.catalog import ModelInfo


class RemoteContents:
    """``pipeline.Contents`` reached through the registry actor, from decode tasks and the
    driver alike. Calls from one caller run in the order made, so a ``settle`` the driver
    sends without waiting is seen by its next question."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    @property
    def actor(self) -> Any:
        return self._actor

    def classify(self, files: Sequence[tuple[str, str]]) -> list[Answer]:
        answers: list[Answer] = self._ask("classify", files)
        return answers

    def settle(self, content_hash: str, error: str | None = None) -> None:
        self.actor.call.remote("settle", content_hash, error)

    def release(self, path: str) -> None:
        self.actor.call.remote("release", path)

    def abandon(self, path: str, reason: str) -> str | None:
        claimed_by: str | None = self._ask("abandon", path, reason)
        return claimed_by

    def failure(self, content_hash: str) -> str | None:
        reason: str | None = self._ask("failure", content_hash)
        return reason

    def is_claimed(self, content_hash: str) -> bool:
        claimed: bool = self._ask("is_claimed", content_hash)
        return claimed

    def _ask(self, method: str, *args: Any) -> Any:
        import ray

        try:
            return ray.get(self.actor.call.remote(method, *args))
        except ray.exceptions.RayActorError:
            raise DreamsearchError(
                "the run's registry actor (on the driver's node) died; committed batches are "
                "kept: run the same command again to resume"
            ) from None


class DriverContents(RemoteContents):
    """The driver's side, which starts the registry (``start``) only when first asked: a
    run with nothing to read starts no Ray at all."""

    def __init__(self, start: Callable[[], Any]) -> None:
        super().__init__(None)
        self._start = start

    @property
    def actor(self) -> Any:
        return self._start()


class Registry:
    """The run's ``Contents`` on the driver's node, reading the catalog the driver writes."""

    def __init__(self, catalog_path: str, models: list[ModelInfo]) -> None:
        from dreamsearch.catalog import Catalog  # here: decode tasks and embed actors import this module too

        self._contents = Contents(Catalog(Path(catalog_path), read_only=True), models)

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self._contents, method)(*args)

    def ping(self) -> None:
        """Answered once every call sent before it by the same caller is done."""
