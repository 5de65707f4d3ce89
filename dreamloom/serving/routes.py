"""Which adapters a served model version answers for: names, versions and aliases, frozen into each
Triton model version folder as ``serving.json``.

A deploy never edits a running model's routes: it writes a new model version folder with new
routes, and Triton swaps versions only once the new one is ready.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dreamloom.serving.protocol import RequestError

ROUTES_FILE = "serving.json"
_REFERENCE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))?$")


@dataclass
class AdapterRoutes:
    versions: dict[str, str] = field(default_factory=dict)  # version -> artifact folder
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> version


@dataclass
class Routes:
    base_model: str
    dreambooth: str | None = None  # artifact folder: this model's UNet is a DreamBooth one
    adapters: dict[str, AdapterRoutes] = field(default_factory=dict)
    # The adapter the deploy that wrote this version added ("name/version"), and the mode it serves
    # in: the version renders through it before Triton marks it ready.
    verify_adapter: str | None = None
    verify_mode: str = "txt2img"

    def resolve(self, reference: str) -> tuple[str, Path]:
        """``name@alias``, ``name/version`` or ``name`` (its champion) -> ("name/version", folder)."""
        match = _REFERENCE.match(reference.strip())
        if not match:
            raise RequestError(f"adapter {reference!r}: write NAME@ALIAS (e.g. shoe@champion) or NAME/VERSION")
        name = match["name"]
        routes = self.adapters.get(name)
        if routes is None:
            known = ", ".join(sorted(self.adapters)) or "none yet; deploy one with `dreamloom deploy`"
            raise RequestError(f"unknown adapter {name!r}; deployed adapters: {known}")
        version = match["version"] or routes.aliases.get(match["alias"] or "champion")
        if version is None:
            raise RequestError(
                f"adapter {name} has no alias {match['alias'] or 'champion'!r}; "
                f"aliases: {', '.join(sorted(routes.aliases)) or 'none'}"
            )
        if version not in routes.versions:
            raise RequestError(
                f"adapter {name} has no deployed version {version}; "
                f"deployed: {', '.join(sorted(routes.versions, key=int))}"
            )
        return f"{name}/{version}", Path(routes.versions[version])

    def with_adapter(
        self, name: str, version: str, folder: Path, aliases: dict[str, str], mode: str = "txt2img"
    ) -> Routes:
        """A copy with ``name``'s ``version`` added (to be verified in ``mode``) and its aliases set
        to ``aliases`` (alias -> version, as the registry has them now) where they point at a
        deployed version."""
        adapters = {key: AdapterRoutes(dict(r.versions), dict(r.aliases)) for key, r in self.adapters.items()}
        routes = adapters.setdefault(name, AdapterRoutes())
        routes.versions[version] = str(folder)
        routes.aliases = {alias: str(v) for alias, v in aliases.items() if str(v) in routes.versions}
        return Routes(self.base_model, self.dreambooth, adapters, f"{name}/{version}", mode)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / ROUTES_FILE
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, folder: Path) -> Routes:
        document = json.loads((Path(folder) / ROUTES_FILE).read_text())
        adapters = {name: AdapterRoutes(**routes) for name, routes in document.pop("adapters", {}).items()}
        return cls(adapters=adapters, **document)
