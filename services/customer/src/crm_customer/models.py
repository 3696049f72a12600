"""The customer database: contacts and accounts."""

from __future__ import annotations

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

from crm_kit.db import Resource, make_base

Base = make_base()


class Account(Base, Resource):
    __tablename__ = "accounts"

    name: Mapped[str] = mapped_column(String(255), nullable=False)
    industry: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    website: Mapped[str] = mapped_column(String(255), nullable=False, default="")


class Contact(Base, Resource):
    __tablename__ = "contacts"

    first_name: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    last_name: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    email: Mapped[str] = mapped_column(String(320), nullable=False, default="", index=True)
    phone: Mapped[str] = mapped_column(String(32), nullable=False, default="", index=True)
    account_id: Mapped[str] = mapped_column(String(36), nullable=False, default="", index=True)
    owner_id: Mapped[str] = mapped_column(String(64), nullable=False, default="", index=True)
    tags: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)

    @property
    def display_name(self) -> str:
        return " ".join(p for p in (self.first_name, self.last_name) if p)
