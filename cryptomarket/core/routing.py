"""Routes the seed served on both GET and POST, registered once per method with distinct ids."""

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def get_and_post(router: APIRouter, path: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
    def register(endpoint: Endpoint) -> Endpoint:
        name = endpoint.__name__
        router.add_api_route(path, endpoint, methods=["GET"], operation_id=name, **options)
        router.add_api_route(
            path, endpoint, methods=["POST"], operation_id=f"{name}_post", **options
        )
        return endpoint

    return register
