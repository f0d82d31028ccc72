"""A registry of classes by name: what objectives, methods and other pluggable parts share."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from infoview.config import did_you_mean
from infoview.errors import ConfigError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """``@registry.register("name")`` on a class sets ``cls.name`` and makes ``registry.get("name")`` return it.

    ``what`` names the kind in errors ("unknown objective 'x'"); ``listing``
    heads the names an unknown-name error lists ("Available: a, b").
    Registering another class under a taken name is an error.
    """

    def __init__(self, what: str, listing: str = "Available"):
        self.what, self.listing = what, listing
        self.items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(cls: T) -> T:
            if name in self.items and self.items[name] is not cls:
                raise ValueError(f"{self.what} '{name}' is already registered by {self.items[name].__name__}")
            cls.name = name
            self.items[name] = cls
            return cls

        return deco

    def names(self) -> list[str]:
        """The registered names, in the order they were registered."""
        return list(self.items)

    def get(self, name: str) -> T:
        """The class registered as ``name``; an unknown name is a ConfigError naming the nearest and all."""
        if name not in self.items:
            raise ConfigError(f"unknown {self.what} '{name}'" + did_you_mean(name, self.items)
                              + f" {self.listing}: " + ", ".join(sorted(self.items)))
        return self.items[name]
