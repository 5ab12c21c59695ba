"""Alembic, run from the installed package.

The migration scripts ship inside the ``migrations`` package, so their
location is resolved from the import system and works from a wheel as well as
from a checkout.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from .database import first_line
from .store import NotAnArchive, SchemaBehind, Store, StoreError, sqlite_path


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at the packaged migrations and ``url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(str(files("migrations")))))
    # ConfigParser interpolation would choke on "%" in passwords.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = script.get_current_head()
    assert head is not None
    return head


@dataclass(frozen=True)
class SchemaState:
    current: str | None
    head: str

    @property
    def at_head(self) -> bool:
        return self.current == self.head

    @property
    def empty(self) -> bool:
        return self.current is None


def schema_state(engine: sa.Engine) -> SchemaState:
    """The archive's revision and the head this version of the tool expects."""
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return SchemaState(current=current, head=head_revision())


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def open_archive(url: str, create: bool = True) -> Store:
    """Open the archive for ingest, checking that its schema is at head.

    A brand-new SQLite archive (no file, or an empty file) is created and
    migrated; an existing archive behind head is never migrated implicitly.
    """
    store = Store.open(url)
    try:
        path = sqlite_path(url)
        if create and path is not None and (not path.exists() or path.stat().st_size == 0):
            if not path.parent.is_dir():
                raise NotAnArchive(f"the directory of the archive {path} does not exist")
            try:
                upgrade(url)
            except (sa.exc.OperationalError, sa.exc.InterfaceError):
                raise
            except sa.exc.DBAPIError as exc:
                raise NotAnArchive(f"{path} is not a usable archive: {first_line(exc)}") from None
        try:
            state = schema_state(store.engine)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise StoreError(f"cannot open the archive: {first_line(exc)}") from None
        except sa.exc.DBAPIError as exc:
            where = path or "the database"
            raise NotAnArchive(f"{where} is not a usable archive: {first_line(exc)}") from None
        if state.empty:
            if create and path is not None and not _has_tables(store.engine):
                upgrade(url)
                return store
            raise SchemaBehind(
                "the archive has no grantex-archive schema: run `grantex-archive db upgrade`"
            )
        if not state.at_head:
            known = state.current in _known_revisions()
            if not known:
                raise SchemaBehind(
                    f"the archive's schema ({state.current}) is newer than this version of "
                    f"grantex-archive ({state.head}): upgrade grantex-archive"
                )
            raise SchemaBehind(
                f"the archive's schema is at {state.current}, this version needs "
                f"{state.head}: run `grantex-archive db upgrade`"
            )
    except BaseException:
        store.close()
        raise
    return store


def _has_tables(engine: sa.Engine) -> bool:
    return bool(sa.inspect(engine).get_table_names())


def _known_revisions() -> set[str]:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return {rev.revision for rev in script.walk_revisions()}
